"""The example speakers (agents/speakers.py) and the per-run loop for speakers vmap cannot batch."""

import pytest
import torch

from agents.speakers import ConvSpeaker, GRUSpeaker, MLPSpeaker
from tests.test_language_trainer import TINY
from trainers.language.speaker_check import check_speaker
from trainers.language.trainer import LanguageTrainer
from trainers.population import Population


@pytest.mark.parametrize(("speaker", "batched"), [(MLPSpeaker, True), (ConvSpeaker, True), (GRUSpeaker, False)])
def test_each_example_speaker_trains_batched_or_by_the_per_run_loop(splits, speaker, batched):
    assert check_speaker(speaker, TINY.message_length, TINY.vocab_size, 64) is batched
    trainer = LanguageTrainer(TINY, splits, [("none", 0), ("both", 1)], speaker_cls=speaker)
    assert trainer.speakers["student"].vectorized is batched
    before = [p.clone() for p in trainer.speakers["teacher"].parameters()]
    results = trainer.fit()
    after = trainer.speakers["teacher"].parameters()
    assert all(not torch.equal(b[r], a[r]) for r in (0, 1) for b, a in zip(before, after, strict=True))
    assert all(0.0 <= r.test_accuracy <= 100.0 for r in results)


def test_a_gru_speaker_gives_the_same_numbers_from_the_same_seed(splits):
    first, second = (LanguageTrainer(TINY, splits, [("both", 0)], speaker_cls=GRUSpeaker).fit() for _ in range(2))
    assert first == second


def test_the_per_run_loop_matches_vmap_in_outputs_and_gradients():
    torch.manual_seed(0)
    models = [ConvSpeaker(64, 4, 2, hidden=8) for _ in range(3)]
    batched, looped = Population(models), Population(models, vectorized=False)
    views = torch.rand(3, 5, 64)
    for a, b in zip(batched(views), looped(views), strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    for a, b in zip(batched.shared(views[0]), looped.shared(views[0]), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    rows = torch.tensor([2, 0])
    assert torch.allclose(batched.rows(rows, views[:2])[0], looped.rows(rows, views[:2])[0], atol=1e-6)
    grads = [torch.autograd.grad(p(views)[0].square().sum(), p.parameters()) for p in (batched, looped)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads, strict=True))
