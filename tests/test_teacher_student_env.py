import numpy as np
import pytest
import torch

from envs import teacher_student as ts
from tests.conftest import check_pettingzoo


def make(**kw):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(60, 12, generator=g), torch.arange(60) % 10
    teacher_logits = 3 * torch.nn.functional.one_hot(labels, 10).float() + torch.randn(60, 10, generator=g)
    defaults = {"stack_size": 3, "batch_size": 4, "max_steps": 6, "hidden": (8,), "reward_samples": 20}
    return ts.parallel_env(images=images, labels=labels, teacher_logits=teacher_logits, val_images=images[:20],
                           val_labels=labels[:20], **{**defaults, **kw})


def test_pettingzoo_api_aec_and_seeding():
    check_pettingzoo(make)


def test_teacher_sees_both_predictions_and_their_distances():
    env = make()
    obs, _ = env.reset(seed=0)
    teacher, student = obs["teacher"][:, :10], obs["teacher"][:, 10:20]
    np.testing.assert_allclose(teacher.sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(student.sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(obs["teacher"][:, 20], -(teacher * np.log(student)).sum(-1), rtol=1e-4)
    np.testing.assert_allclose(obs["teacher"][:, 21], np.linalg.norm(teacher - student, axis=-1), rtol=1e-4)
    assert obs["student"].shape == (4, 22) and not obs["student"].any()  # nothing given yet
    assert (obs["teacher"][:, 22] == 0).all()  # a fresh student: no training progress yet


def test_warmup_starts_each_episode_from_a_partly_trained_student():
    env = make(warmup=40)
    obs, _ = env.reset(seed=3)
    again, _ = make(warmup=40).reset(seed=3)
    np.testing.assert_array_equal(obs["teacher"], again["teacher"])  # same seed, same warm-up
    updates = env._updates
    assert 0 < updates <= 40 and obs["teacher"][0, 22] == pytest.approx(updates / ts.PROGRESS_UPDATES)
    env.step({"teacher": ts.scripted_teacher("random")(obs["teacher"]), "student": 1})
    assert env._updates == updates + 1
    fresh, _ = make().reset(seed=3)
    assert not np.allclose(fresh["teacher"][:, 10:20], obs["teacher"][:, 10:20])  # the student has learned
    with pytest.raises(ValueError, match="warmup"):
        make(warmup=-1)


def test_scripted_teacher_sends_its_hardest_samples_with_the_chosen_target():
    env = make()
    obs, _ = env.reset(seed=0)
    action = ts.scripted_teacher("cross_entropy", "true")(obs["teacher"])
    hardest = set(np.argsort(-obs["teacher"][:, 20])[:4].tolist())
    stack = env._stack.clone()
    obs2, rewards, *_, infos = env.step({"teacher": action, "student": 1})
    given_images = torch.from_numpy(obs2["student"][:, :12])
    assert {int((env.images[stack] == img).all(-1).nonzero()[0]) for img in given_images} == hardest
    labels = env.labels[stack[list(hardest)]]
    assert sorted(obs2["student"][:, 12:].argmax(-1).tolist()) == sorted(labels.tolist())
    assert infos["teacher"]["target"] == "true" and rewards["teacher"] == rewards["student"]


def test_reward_is_the_drop_of_validation_loss_and_zero_without_an_update():
    env = make()
    obs, _ = env.reset(seed=0)
    _, rewards, *_ = env.step({"teacher": ts.scripted_teacher("random")(obs["teacher"]), "student": 0})
    assert rewards["teacher"] == 0.0
    before = env._val_loss()
    obs, rewards, *_ = env.step({"teacher": ts.scripted_teacher("random")(obs["teacher"]), "student": 1})
    assert rewards["teacher"] == pytest.approx(before - env._val_loss(), abs=1e-6) and rewards["teacher"] != 0.0


def test_advantage_reward_is_the_drop_beyond_plain_training_and_leaves_the_student_alone():
    drop, advantage = make(), make(reward="advantage")
    obs, _ = drop.reset(seed=2)
    advantage.reset(seed=2)
    action = ts.scripted_teacher("cross_entropy", "true")(obs["teacher"])
    plain = advantage._plain_drop("true", advantage._val_loss())  # what the reference update would give
    advantage._reference.manual_seed(2)  # the same draw again inside the step
    _, by_drop, *_ = drop.step({"teacher": action, "student": 1})
    _, by_advantage, *_ = advantage.step({"teacher": action, "student": 1})
    assert by_advantage["teacher"] == pytest.approx(by_drop["teacher"] - plain, abs=1e-6)
    assert plain != 0.0 and drop._updates == advantage._updates == 1
    for a, b in zip(drop.student.parameters(), advantage.student.parameters(), strict=True):
        assert torch.equal(a, b)  # the reference update trained a copy
    # sending exactly the samples plain training would have drawn earns nothing
    env = make(reward="advantage")
    obs, _ = env.reset(seed=2)
    drawn = torch.randperm(12, generator=torch.Generator().manual_seed(2))[:4]
    action = -np.ones(13, dtype=np.float32)
    action[drawn.numpy()], action[-1] = 1.0, -1.0
    _, rewards, *_ = env.step({"teacher": action, "student": 1})
    assert rewards["teacher"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="reward must be one of drop, advantage"):
        make(reward="accuracy")


def test_bad_teacher_action_is_named():
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="13 scores in"):
        env.step({"teacher": np.zeros(5), "student": 1})
    with pytest.raises(ValueError, match="13 scores in"):
        env.step({"teacher": np.full(13, 2.0), "student": 1})
