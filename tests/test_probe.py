"""The offline linear probe behind the references and the language analysis."""

import pytest
import torch

from envs.data import Split, Splits
from trainers.probe import accuracy, train_linear_probes


def noisy_classes(scale: torch.Tensor, shift: torch.Tensor) -> Splits:
    """Ten Gaussian clusters in 8 dimensions, each dimension rescaled and shifted."""
    generator, parts = torch.Generator().manual_seed(0), []
    centres = torch.randn(10, 8, generator=generator)
    for n in (2000, 500, 1000):
        labels = torch.randint(10, (n,), generator=generator)
        x = centres[labels] + 0.8 * torch.randn(n, 8, generator=generator)
        parts.append(Split(x * scale + shift, labels))
    return Splits(*parts)


def test_the_probe_sees_through_the_scale_of_its_inputs():
    plain = noisy_classes(torch.ones(8), torch.zeros(8))
    scale = torch.logspace(-3, 3, 8)  # features six orders of magnitude apart, as dead and live units are
    skewed = noisy_classes(scale, torch.linspace(-5, 5, 8))
    a, b = train_linear_probes([plain, skewed], [0, 0], epochs=5, lr=1e-2)
    # standardised training makes the two runs the same classifier, returned for the raw inputs
    assert torch.allclose(b.weight * scale, a.weight, atol=1e-3)
    assert accuracy(b, skewed.test).item() == accuracy(a, plain.test).item() > 50.0


def test_probes_trained_together_are_the_probes_trained_alone():
    sets = [noisy_classes(torch.logspace(-1, 1, 8), torch.full((8,), float(k))) for k in range(3)]
    for by in ("accuracy", "loss"):
        together = train_linear_probes(sets, [0, 1, 2], epochs=4, lr=1e-2, by=by)
        for k, probe in enumerate(together):
            (alone,) = train_linear_probes([sets[k]], [k], epochs=4, lr=1e-2, by=by)
            assert torch.allclose(probe.weight, alone.weight, atol=1e-5)
            assert torch.allclose(probe.bias, alone.bias, atol=1e-5)
    assert not torch.allclose(together[0].weight, together[1].weight)  # each its own seed


def test_probes_trained_together_need_one_seed_each_and_equal_shapes():
    sets = [noisy_classes(torch.ones(8), torch.zeros(8))]
    with pytest.raises(ValueError, match="one seed per probe"):
        train_linear_probes(sets, [0, 1])
    narrow = Splits(*(Split(s.images[:, :4], s.labels) for s in sets[0].named().values()))
    with pytest.raises(ValueError, match="equal split shapes"):
        train_linear_probes([sets[0], narrow], [0, 0])
