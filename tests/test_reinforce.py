import pytest
import torch

from trainers.reinforce import Reinforce


def estimate(logits: torch.Tensor, reward_of: torch.Tensor, samples: int, reinforce: Reinforce) -> torch.Tensor:
    """The REINFORCE gradient of E[reward] w.r.t. ``logits`` from ``samples`` draws (one run)."""
    theta = logits.clone().requires_grad_()
    dist = torch.distributions.Categorical(logits=theta)
    actions = dist.sample((samples,))
    loss = reinforce.loss(dist.log_prob(actions).unsqueeze(0), reward_of[actions].unsqueeze(0))
    (grad,) = torch.autograd.grad(-loss.sum(), theta)  # the loss is minimised: its negative is the ascent
    return grad


def exact(logits: torch.Tensor, reward_of: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, -1)
    return p * (reward_of - (p * reward_of).sum())  # d/dtheta sum_a p_a f_a


@pytest.mark.parametrize("baseline_first", [False, True])
def test_estimator_is_unbiased_on_a_categorical_with_known_gradient(baseline_first):
    torch.manual_seed(0)
    logits, reward_of = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.0, 3.0, -2.0, 0.5])
    reinforce = Reinforce(entropy_weight=0.0, baseline_decay=0.9)
    if baseline_first:  # a baseline learned from earlier batches must not bias the estimate
        for _ in range(20):
            estimate(logits, reward_of, 1000, reinforce)
        expected = (torch.softmax(logits, -1) * reward_of).sum().item()
        assert reinforce.baseline(1).item() == pytest.approx(expected, abs=0.1)
    grads = torch.stack([estimate(logits, reward_of, 1000, reinforce) for _ in range(400)])
    mean, stderr = grads.mean(0), grads.std(0) / 400**0.5
    assert torch.all((mean - exact(logits, reward_of)).abs() < 4 * stderr + 1e-4), (mean, exact(logits, reward_of))


def test_baseline_reduces_variance_without_moving_the_mean():
    torch.manual_seed(1)
    logits, reward_of = torch.tensor([0.0, 1.0]), torch.tensor([10.0, 11.0])  # large common offset
    plain = torch.stack([estimate(logits, reward_of, 50, Reinforce(0.0, 0.0)) for _ in range(300)])
    warm = Reinforce(0.0, 0.9)
    for _ in range(50):
        estimate(logits, reward_of, 50, warm)
    based = torch.stack([estimate(logits, reward_of, 50, warm) for _ in range(300)])
    assert based.var(0).sum() < 0.1 * plain.var(0).sum()


def test_entropy_bonus_pushes_towards_uniform_and_baselines_are_per_run():
    theta = torch.tensor([[3.0, 0.0], [0.0, 0.0]], requires_grad=True)
    dist = torch.distributions.Categorical(logits=theta)
    reinforce = Reinforce(entropy_weight=1.0)
    loss = reinforce.loss(torch.zeros(2, 1), torch.tensor([[5.0], [-1.0]]), dist.entropy().unsqueeze(-1))
    loss.sum().backward()
    assert theta.grad[0, 0] > 0 and theta.grad[1].abs().max() < 1e-6  # descent lowers the dominant logit
    assert reinforce.baseline(2).tolist() == pytest.approx([5.0, -1.0])  # bias-corrected after one update


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="baseline_decay < 1"):
        Reinforce(baseline_decay=1.0)
