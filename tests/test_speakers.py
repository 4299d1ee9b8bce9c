"""Plug-in speakers: the example speakers (agents/speakers.py), the per-run loop for speakers vmap cannot batch,
and the checks that name what is wrong with a speaker before training."""

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


class TinySpeaker(torch.nn.Module):
    """A plug-in speaker defined only here: a single linear layer with tanh features."""

    def __init__(self, view_dim: int, message_length: int, vocab_size: int):
        super().__init__()
        self.features = torch.nn.Linear(view_dim, 5)
        self.heads = torch.nn.Linear(5, message_length * vocab_size)
        self.shape = (message_length, vocab_size)

    def forward(self, view):
        h = torch.tanh(self.features(view))
        return self.heads(h).unflatten(-1, self.shape), h


def test_a_plugged_in_speaker_trains_through_the_python_api(splits):
    trainer = LanguageTrainer(TINY, splits, [("both", 0)], speaker_cls=TinySpeaker)
    before = trainer.speakers["student"].parameters()[0].clone()
    results = trainer.fit()
    assert trainer.probe.params["linear.weight"].shape[-1] == 5  # the probe reads the plug-in's 5 features
    assert not torch.equal(before, trainer.speakers["student"].parameters()[0])
    assert 0.0 <= results[0].test_accuracy <= 100.0


class LogitsOnly(TinySpeaker):
    def forward(self, view):
        return super().forward(view)[0]


class WrongWidth(TinySpeaker):
    def forward(self, view):
        logits, h = super().forward(view)
        return logits[..., :1], h


class NeedsMore(TinySpeaker):
    def __init__(self, view_dim: int, message_length: int, vocab_size: int, depth: int):
        super().__init__(view_dim, message_length, vocab_size)


class ChangesView(TinySpeaker):
    def forward(self, view):
        return super().forward(view.clamp_(0, 0.5))


class ChangesWeights(TinySpeaker):
    def forward(self, view):
        with torch.no_grad():
            self.heads.bias.add_(1.0)
        return super().forward(view)


class Detached(TinySpeaker):
    def forward(self, view):
        logits, h = super().forward(view)
        return logits.detach(), h


class Noisy(TinySpeaker):
    def forward(self, view):
        logits, h = super().forward(view)
        return logits + torch.randn_like(logits), h


class NaNs(TinySpeaker):
    def forward(self, view):
        logits, h = super().forward(view)
        return logits * float("nan"), h


class Huge(TinySpeaker):
    def forward(self, view):
        logits, h = super().forward(view)
        return logits * 1e38, h


class Parameterless(torch.nn.Module):
    def __init__(self, view_dim: int, message_length: int, vocab_size: int):
        super().__init__()
        self.shape = (message_length, vocab_size)

    def forward(self, view):
        return view[..., :8].unflatten(-1, self.shape), view


class Crashes(TinySpeaker):
    def forward(self, view):
        return super().forward(view[..., :3])


@pytest.mark.parametrize(
    ("speaker", "message"),
    [
        (LogitsOnly, "LogitsOnly.forward must return a pair (logits [B, 4, 2], features [B, H]), got Tensor"),
        (WrongWidth, "WrongWidth must return logits [B, 4, 2] and features [B, H], got (3, 4, 1) and (3, 5)"),
        (NeedsMore, "speaker NeedsMore(view_dim=64, message_length=4, vocab_size=2) cannot be built "
                    "(agents/language.py): TypeError"),
        (ChangesView, "speaker ChangesView.forward changes its input view in place"),
        (ChangesWeights, "speaker ChangesWeights.forward changes 'heads.bias' in place"),
        (Detached, "speaker Detached's logits do not depend on its parameters"),
        (Noisy, "speaker Noisy.forward is random in eval mode"),
        (NaNs, "speaker NaNs returns non-finite logits or features (NaN or inf) on views in [0, 1]"),
        (Huge, "speaker Huge returns logits as large as"),
        (Parameterless, "speaker Parameterless has no trainable parameters"),
        (Crashes, "speaker Crashes.forward fails on views [B, 64]: RuntimeError: mat1 and mat2 shapes"),
        (int, "speaker int must be a torch.nn.Module subclass"),
    ],
)
def test_a_wrong_plug_in_is_one_line_from_the_python_api_before_training(splits, speaker, message):
    with pytest.raises(ValueError) as error:
        LanguageTrainer(TINY, splits, [("both", 0)], speaker_cls=speaker)
    assert message in str(error.value) and "\n" not in str(error.value)


class NormSpeaker(torch.nn.Module):
    """A plug-in with batch norm: evaluation must not use batch statistics nor update running ones."""

    def __init__(self, view_dim: int, message_length: int, vocab_size: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(view_dim, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU())
        self.heads = torch.nn.Linear(6, message_length * vocab_size)
        self.shape = (message_length, vocab_size)

    def forward(self, view):
        h = self.body(view)
        return self.heads(h).unflatten(-1, self.shape), h


def test_evaluation_runs_plugged_in_speakers_in_eval_mode(splits):
    trainer = LanguageTrainer(TINY, splits, [("none", 0), ("both", 1)], speaker_cls=NormSpeaker)
    trainer.train_step()
    running = {k: v.clone() for k, v in trainer.speakers["student"].buffers.items()}
    first = trainer.evaluate(splits.val)["accuracy"]
    assert all(torch.equal(running[k], v) for k, v in trainer.speakers["student"].buffers.items())
    assert torch.equal(first, trainer.evaluate(splits.val, chunk=7)["accuracy"])  # no batch statistics
    trainer.train_step()
    assert not torch.equal(running["body.1.running_mean"], trainer.speakers["student"].buffers["body.1.running_mean"])


def test_a_speaker_file_named_twice_is_one_module_and_a_namesake_is_refused(tmp_path):
    from agents.loading import load_class

    (tmp_path / "twice_spk.py").write_text("class A:\n    pass\n")
    first = load_class(f"{tmp_path / 'twice_spk.py'}:A")
    assert load_class(f"{tmp_path / 'twice_spk.py'}:A") is first  # every variant of a sweep names the same file
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "twice_spk.py").write_text("class A:\n    pass\n")
    with pytest.raises(ValueError, match="already imported; rename"):
        load_class(f"{other / 'twice_spk.py'}:A")
