import numpy as np
import pytest
import torch

from envs import language
from envs.language import AGENTS, View, agreement, communication_loss, diversity, exchange
from tests.conftest import check_pettingzoo


def draw_masks(noise: float, pixels: int, seed: int) -> torch.Tensor:
    return View("invert", noise).masks(pixels, seed)


def apply_mask(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return View("invert").apply(images, mask)


def make(**kw):
    images = torch.rand(50, 16, generator=torch.Generator().manual_seed(0))
    return language.parallel_env(images=images, message_length=3, vocab_size=2, batch_size=4, max_steps=5, **kw)


def test_masks_are_seeded_fixed_and_distinct():
    a, b = draw_masks(0.1, 784, seed=3), draw_masks(0.1, 784, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw_masks(0.1, 784, seed=4))
    assert not torch.equal(a[0], a[1])  # each agent has its own mask
    assert 0.06 < a.mean().item() < 0.14


def test_env_masks_do_not_change_over_its_life():
    env = make(noise=0.3)
    before = env.masks.clone()
    env.reset(seed=1)
    env.step({a: env.action_space(a).sample() for a in env.agents})
    env.reset(seed=2)
    assert torch.equal(before, env.masks)


def test_masked_pixels_are_inverted_and_others_kept():
    images = torch.tensor([[0.0, 0.25, 1.0, 0.5]])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert torch.allclose(apply_mask(images, mask), torch.tensor([[1.0, 0.25, 0.0, 0.5]]))


def test_agents_see_their_own_view_never_the_clean_image():
    env = make(noise=0.5)
    obs, _ = env.reset(seed=0)
    pixels = env.images.shape[1]
    teacher, student = (torch.from_numpy(obs[a][:, :pixels]) for a in AGENTS)
    # recover the clean images through the teacher's mask; the student's view must be that image through its mask
    clean = apply_mask(teacher, env.masks[0])
    assert torch.allclose(apply_mask(clean, env.masks[1]), student, atol=1e-6)
    assert not torch.allclose(teacher, clean) and not torch.allclose(student, clean)
    assert (obs["teacher"][:, pixels:] == 0).all()  # nothing received before the first step


def test_step_rewards_and_delivers_messages():
    env = make(noise=0.1, diversity_weight=0.0)
    env.reset(seed=0)
    teacher = np.array([0, 1, 1] * 4)
    student = np.array([0, 1, 0] * 4)
    obs, rewards, terms, truncs, _ = env.step({"teacher": teacher, "student": student})
    assert rewards == {"teacher": pytest.approx(2 / 3), "student": pytest.approx(2 / 3)}
    pixels = env.images.shape[1]
    assert (obs["teacher"][:, pixels:] == student.reshape(4, 3)).all()
    assert (obs["student"][:, pixels:] == teacher.reshape(4, 3)).all()
    assert not any(terms.values()) and not any(truncs.values())


def test_constant_language_earns_no_diversity():
    one_hot = torch.nn.functional.one_hot(torch.zeros(8, 3, dtype=torch.long), 2).float()
    assert diversity(one_hot).item() == pytest.approx(0.0)
    balanced = torch.nn.functional.one_hot(torch.arange(8).remainder(2).unsqueeze(-1).expand(8, 3), 2).float()
    assert diversity(balanced).item() == pytest.approx(1.0)


def test_episode_truncates_after_max_steps():
    env = make()
    env.reset(seed=0)
    for _ in range(5):
        _, _, _, truncs, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
    assert all(truncs.values()) and env.agents == []


def test_exchange_keeps_the_graph_to_the_sender():
    sent = {a: torch.randn(2, 3, 2, requires_grad=True) for a in AGENTS}
    received = exchange(sent)
    assert received["student"] is sent["teacher"] and received["teacher"] is sent["student"]
    communication_loss(received["student"].softmax(-1), torch.randn(2, 3, 2)).sum().backward()
    assert sent["teacher"].grad is not None and sent["teacher"].grad.abs().sum() > 0
    assert sent["student"].grad is None


def test_agreement_is_exact_on_one_hot_and_differentiable_on_soft():
    a = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 0]]), 2).float()
    b = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 1]]), 2).float()
    assert agreement(a, b).item() == pytest.approx(0.5)
    soft = torch.full((1, 4, 2), 0.5, requires_grad=True)
    agreement(soft, b).sum().backward()
    assert soft.grad is not None


def test_invalid_noise_is_rejected():
    with pytest.raises(ValueError, match="noise"):
        draw_masks(1.5, 10, seed=0)


def test_pettingzoo_api_aec_and_seeding():
    check_pettingzoo(make)


def test_observations_lie_in_their_space():
    env = make(noise=0.5)
    obs, _ = env.reset(seed=0)
    for _ in range(4):
        for a in env.agents:
            assert env.observation_space(a).contains(obs[a])
        obs, *_ = env.step({a: env.action_space(a).sample() for a in env.agents})


def test_module_layout_follows_pettingzoo():
    images = torch.rand(20, 16)
    aec = language.env(images=images, batch_size=2, message_length=3)
    aec.reset(seed=0)
    assert aec.agents == ["teacher", "student"]
    assert isinstance(language.raw_env(images=images).unwrapped, language.parallel_env)


def test_malformed_actions_are_named():
    env = make()
    env.reset(seed=0)
    good = env.action_space("student").sample()
    with pytest.raises(ValueError, match=r"teacher.s action must be 12 integer tokens in"):
        env.step({"teacher": np.full(12, 2), "student": good})
    with pytest.raises(ValueError, match="of shape"):
        env.step({"teacher": np.zeros(5, dtype=int), "student": good})
