import dataclasses
import itertools
import math
from collections import Counter

import pytest
import torch

from envs.selection import MEASURES
from trainers.teacher_student.policy import (
    PolicyConfig,
    load_scorer,
    plackett_luce,
    ppo_scorer,
    register,
    save_policy,
    train_ppo,
    train_reinforce,
    windowed_returns,
)
from trainers.teacher_student.student import Selection, StudentConfig, StudentTrainer


def test_plackett_luce_log_probability_is_exact():
    scores = torch.tensor([1.0, 0.0, -0.5, 0.3])
    g = torch.Generator().manual_seed(0)
    counts, log_p = Counter(), {}
    for _ in range(20_000):
        chosen, lp = plackett_luce(scores, 2, g)
        key = tuple(chosen.tolist())
        counts[key] += 1
        log_p[key] = lp.item()
    p = torch.softmax(scores, 0).tolist()
    for a, b in itertools.permutations(range(4), 2):
        exact = p[a] * p[b] / (1 - p[a])
        assert log_p.get((a, b), math.log(exact)) == pytest.approx(math.log(exact), abs=1e-5)
        assert counts[(a, b)] / 20_000 == pytest.approx(exact, abs=0.015)


def test_plackett_luce_gradient_raises_the_chosen_scores():
    scores = torch.zeros(5, requires_grad=True)
    chosen, log_p = plackett_luce(scores, 2, torch.Generator().manual_seed(1))
    log_p.backward()
    assert all(scores.grad[c] > 0 for c in chosen) and scores.grad.sum().abs() < 1e-6


CONFIG = PolicyConfig(episodes=2, steps=6, stack_size=2, batch_size=4, update_every=3, reward_samples=20, warmup=5,
                      horizon=2)


@pytest.fixture
def teacher_logits(splits):
    return 4 * torch.nn.functional.one_hot(splits.train.labels, 10).float()


def test_reinforce_teacher_learns_deterministically_and_becomes_a_measure(splits, teacher_logits):
    a = train_reinforce(splits, teacher_logits, CONFIG, seed=0)
    b = train_reinforce(splits, teacher_logits, CONFIG, seed=0)
    untrained = train_reinforce(splits, teacher_logits, dataclasses.replace(CONFIG, episodes=1, steps=1), 0)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), untrained.parameters(), strict=True))
    name = register("test_reinforce", a)
    try:
        assert name in MEASURES and MEASURES[name].reads_student
        runs = [(Selection(2, name, "true"), 0), (Selection(2, "cross_entropy", "true"), 0)]
        config = StudentConfig(batch_size=4, max_epochs=1, eval_every=5)
        trainer = StudentTrainer(config, splits, runs, {0: teacher_logits})
        results = trainer.fit()
        assert all(r.steps for r in results)
    finally:
        MEASURES.pop(name)


def test_ppo_teacher_trains_through_sb3_and_scores_a_stack(splits, teacher_logits):
    model = train_ppo(splits, teacher_logits, CONFIG, seed=0)
    observed = torch.rand(2 * 4, 23)
    scores = ppo_scorer(model)(observed)
    assert scores.shape == (8,) and torch.equal(scores, ppo_scorer(model)(observed))


@pytest.mark.parametrize("kind", ["reinforce", "ppo"])
def test_a_saved_learned_teacher_scores_as_it_did_and_keeps_what_it_observes(splits, teacher_logits, tmp_path, kind):
    train = train_reinforce if kind == "reinforce" else train_ppo
    learned = train(splits, teacher_logits, dataclasses.replace(CONFIG, observe_labels=True), seed=0)
    scorer = learned if kind == "reinforce" else ppo_scorer(learned)
    file = save_policy(learned, tmp_path / "policies" / kind, observe_labels=True)
    loaded, observe_labels = load_scorer(file)
    observed = torch.rand(2 * 4, 23 + 2)  # with both models' probability of the given label
    with torch.no_grad():
        assert torch.equal(loaded(observed), scorer(observed))
    assert observe_labels and sorted(p.name for p in file.parent.iterdir()) == sorted(
        [f"{kind}.pt"] if kind == "reinforce" else [f"{kind}.zip", f"{kind}.json"])  # no temporaries left


def test_windowed_returns_sum_the_next_horizon_rewards():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert windowed_returns(rewards, 1).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert windowed_returns(rewards, 3).tolist() == [6.0, 9.0, 7.0, 4.0]  # fewer at the end of the episode


def test_the_policy_is_blind_to_which_class_is_which():
    from agents.teacher_student import TeacherPolicy

    policy = TeacherPolicy(10)
    generator = torch.Generator().manual_seed(0)
    t = torch.softmax(3 * torch.randn(6, 10, generator=generator), -1)
    s = torch.softmax(torch.randn(6, 10, generator=generator), -1)
    rest = torch.rand(6, 3, generator=generator)
    relabel = torch.randperm(10, generator=generator)
    a = policy(torch.cat([t, s, rest], -1))
    b = policy(torch.cat([t[:, relabel], s[:, relabel], rest], -1))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, policy(torch.cat([t, s.roll(1, 0), rest], -1)))  # but not to the predictions


def test_a_learned_teacher_may_see_both_models_probability_of_the_given_label(splits, teacher_logits):
    from envs.teacher_student import features, parallel_env

    t = torch.tensor([[0.7, 0.2, 0.1]])
    s = torch.tensor([[0.1, 0.3, 0.6]])
    seen = features(t, s, 0, torch.tensor([2]))
    assert seen.shape == (1, 3 + 3 + 5) and seen[0, -2:].tolist() == pytest.approx([0.1, 0.6])
    assert features(t, s).shape == (1, 9)
    env = parallel_env(splits.train.images, splits.train.labels, teacher_logits, splits.val.images,
                       splits.val.labels, stack_size=2, batch_size=4, observe_labels=True)
    obs, _ = env.reset(seed=0)
    assert obs["teacher"].shape == (8, 25) and env.observation_space("teacher").contains(obs["teacher"])
    labels = splits.train.labels[env._stack]
    assert torch.allclose(torch.from_numpy(obs["teacher"][:, -2]), torch.softmax(teacher_logits, -1)[env._stack,
                                                                                                      labels])
    config = dataclasses.replace(CONFIG, observe_labels=True)
    policy = train_reinforce(splits, teacher_logits, config, seed=0)
    name = register("test_labels", policy, observe_labels=True)
    try:
        assert MEASURES[name].reads_labels
        trainer = StudentTrainer(StudentConfig(batch_size=4, max_epochs=1, eval_every=5), splits,
                                 [(Selection(2, name, "true"), 0)], {0: teacher_logits})
        assert trainer.fit()[0].steps
    finally:
        MEASURES.pop(name)
