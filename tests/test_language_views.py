"""Views that lose information (occlude, resample): masks on hand cases, the env, and fixed evaluation noise."""

import pytest
import torch

from envs import language
from envs.data import Split, Splits
from envs.language import AGENTS, View, fixed_views, split_views, views
from trainers.language import LanguageConfig, LanguageTrainer


@pytest.mark.parametrize(("pixels", "visible"), [(784, 0.1), (784, 0.3), (64, 0.5), (65, 0.25)])
@pytest.mark.parametrize("overlap", ["independent", "complementary"])
def test_occlusion_keeps_the_asked_fraction_of_pixels(pixels, visible, overlap):
    masks = View("occlude", visible=visible, overlap=overlap).masks(pixels, seed=1)
    kept = -(-visible * pixels // 1)  # ceil
    assert masks.sum(-1).tolist() == [kept, kept] or (overlap == "complementary" and masks.sum() == pixels)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, View("occlude", visible=visible, overlap=overlap).masks(pixels, seed=1))  # seeded
    assert not torch.equal(masks, View("occlude", visible=visible, overlap=overlap).masks(pixels, seed=2))


@pytest.mark.parametrize("pixels", [784, 65])
def test_complementary_views_are_disjoint_and_at_one_half_cover_every_pixel_once(pixels):
    for visible in (0.1, 0.3, 0.5):
        masks = View("occlude", visible=visible, overlap="complementary").masks(pixels, seed=0)
        assert (masks[0] * masks[1]).sum() == 0
    half = View("occlude", visible=0.5, overlap="complementary").masks(pixels, seed=0)
    assert torch.equal(half.sum(0), torch.ones(pixels))
    independent = View("occlude", visible=0.5).masks(784, seed=0)
    assert (independent[0] * independent[1]).sum() > 0  # independent subsets overlap


def test_rows_give_the_teacher_the_top_and_the_student_the_bottom_whatever_the_seed():
    masks = View("occlude", visible=0.25, overlap="rows").masks(16, seed=0)  # a 4 x 4 image, one row each
    assert masks.view(2, 4, 4).sum(-1).tolist() == [[4, 0, 0, 0], [0, 0, 0, 4]]
    assert torch.equal(masks, View("occlude", visible=0.25, overlap="rows").masks(16, seed=7))
    halves = View("occlude", visible=0.5, overlap="rows").masks(784, seed=0)
    assert torch.equal(halves.sum(0), torch.ones(784)) and halves[AGENTS.index("teacher"), :392].all()


def test_occluded_pixels_are_zero_and_visible_ones_kept():
    images = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.equal(View("occlude").apply(images, mask), torch.tensor([[0.2, 0.0, 0.0, 0.8]]))


def test_resample_replaces_pixels_by_0_or_1_with_probability_noise():
    images = torch.full((200, 500), 0.5)
    uniform = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    seen = View("resample", noise=0.3).apply(images, torch.ones(500), uniform)
    replaced = seen != 0.5
    assert 0.28 < replaced.float().mean() < 0.32
    assert set(seen[replaced].unique().tolist()) == {0.0, 1.0}
    assert 0.45 < seen[replaced].mean() < 0.55  # salt and pepper alike
    with pytest.raises(ValueError, match="uniform noise"):
        View("resample").apply(images, torch.ones(500))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "blur"}, "unknown view 'blur'"),
        ({"kind": "occlude", "visible": 0.0}, "visible must be a fraction"),
        ({"kind": "occlude", "visible": 1.5}, "visible must be a fraction"),
        ({"kind": "occlude", "visible": 0.6, "overlap": "complementary"}, "need visible <= 0.5"),
        ({"overlap": "some"}, "unknown overlap"),
        ({"kind": "resample", "noise": -0.1}, "noise must be a probability"),
    ],
)
def test_bad_views_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        View(**kwargs)


def make_env(**kw):
    images = torch.rand(50, 16, generator=torch.Generator().manual_seed(0))
    return language.parallel_env(images=images, message_length=3, batch_size=4, **kw)


def test_the_env_resamples_noise_every_step_from_its_seed():
    one_image = torch.rand(1, 16, generator=torch.Generator().manual_seed(0)).expand(50, 16)
    env = language.parallel_env(images=one_image, view="resample", noise=0.5, message_length=3, batch_size=4)
    obs, _ = env.reset(seed=0)
    actions = {a: env.action_space(a).sample() for a in env.agents}
    after = env.step(actions)[0]
    assert not (obs["teacher"][:, :16] == after["teacher"][:, :16]).all()  # the same image, new noise
    replay, _ = language.parallel_env(images=one_image, view="resample", noise=0.5, message_length=3,
                                      batch_size=4).reset(seed=0)
    assert all((obs[a] == replay[a]).all() for a in AGENTS)  # seeded
    assert env.observation_space("teacher") == make_env().observation_space("teacher")


def test_the_env_occludes_with_its_fixed_masks():
    env = make_env(view="occlude", visible=0.25, overlap="complementary")
    obs, _ = env.reset(seed=0)
    for i, a in enumerate(AGENTS):
        hidden = env.masks[i] == 0
        assert (obs[a][:, :16][:, hidden.numpy()] == 0).all()
    assert (env.masks[0] * env.masks[1]).sum() == 0


def test_resample_evaluation_noise_is_fixed_per_seed_and_split(splits):
    config = LanguageConfig(view="resample", noise=0.4, steps=2, eval_every=1, hidden=(8,), critic_hidden=8,
                            message_length=4, batch_size=8)
    trainer = LanguageTrainer(config, splits, [("none", 0), ("both", 0), ("none", 1)])
    images = splits.val.images[:20]
    first, again = trainer.eval_views(images, "val", 0), trainer.eval_views(images, "val", 0)
    assert all(torch.equal(first[a], again[a]) for a in AGENTS)  # every evaluation sees the same images
    assert torch.equal(first["student"][0], first["student"][1])  # runs of one seed: the same noise
    assert not torch.equal(first["student"][0], first["student"][2])  # seeds differ
    assert not torch.equal(first["student"][0], trainer.eval_views(images, "test", 0)["student"][0])
    alone = fixed_views(images, trainer.masks[2], trainer.view, seed=1, tag="val")
    assert torch.equal(alone["student"], first["student"][2])  # the analysis and references see the same views
    whole = split_views(splits, trainer.masks[2], trainer.view, seed=1)
    assert torch.equal(whole["student"].val.images[:20], first["student"][2])
    seen = views(splits.train.images[:8], trainer.masks[:1], trainer.view, torch.rand(1, 2, 8, 64))
    assert seen["teacher"].shape == (1, 8, 64)


def test_resample_training_draws_new_noise_every_step(splits, monkeypatch):
    config = LanguageConfig(view="resample", noise=0.4, steps=2, hidden=(8,), critic_hidden=8, message_length=4,
                            batch_size=8)
    trainer = LanguageTrainer(config, splits, [("none", 0)])
    one_image = splits.train.images[:1].expand_as(splits.train.images).clone()
    trainer.splits = Splits(Split(one_image, splits.train.labels), splits.val, splits.test)
    seen = []
    real = language.views
    monkeypatch.setattr("trainers.language.trainer.views", lambda *a: seen.append(real(*a)) or seen[-1])
    trainer.train_step()
    trainer.train_step()
    assert not torch.equal(seen[0]["student"], seen[1]["student"])  # the same image, new noise
    assert not torch.equal(seen[0]["student"][0, 0], seen[0]["student"][0, 1])  # and new noise per image
