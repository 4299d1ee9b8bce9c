"""The offline linear probe behind the references and the language analysis."""

import torch

from envs.data import Split, Splits
from trainers.probe import accuracy, train_linear_probe


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
    a = train_linear_probe(plain, epochs=5, lr=1e-2, seed=0)
    b = train_linear_probe(skewed, epochs=5, lr=1e-2, seed=0)
    # standardised training makes the two runs the same classifier, returned for the raw inputs
    assert torch.allclose(b.weight * scale, a.weight, atol=1e-3)
    assert accuracy(b, skewed.test).item() == accuracy(a, plain.test).item() > 50.0
