"""Check a plug-in speaker class against the speaker protocol (agents/language.py) before training.

A foreign class can be wrong in many ways, and each one fails far from its cause once training runs
(deep inside vmap, or as a silent corruption of shared data). ``check_speaker`` builds two copies, calls
them the way the trainer does and names what is wrong in one line. It also finds out whether vmap can
batch the class; when it cannot (``nn.GRU``, ``.item()``, Python branching on data), the trainer runs the
copies one at a time instead (``Population(vectorized=False)``).
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.population import Population

PROTOCOL = "(agents/language.py)"
MAX_LOGIT = 1e4  # an untrained speaker's logits are O(1); divided by a temperature down to 0.1, 1e38 overflows


def check_speaker(speaker_cls: type, message_length: int, vocab_size: int, pixels: int) -> bool:
    """Raise a one-line ValueError unless ``speaker_cls`` follows the speaker protocol; return whether
    its copies can run batched under vmap (else the trainer loops over runs)."""
    name = getattr(speaker_cls, "__name__", repr(speaker_cls))
    if not (isinstance(speaker_cls, type) and issubclass(speaker_cls, nn.Module)):
        raise ValueError(f"speaker {name} must be a torch.nn.Module subclass {PROTOCOL}")
    kw = {"view_dim": pixels, "message_length": message_length, "vocab_size": vocab_size}
    call = f"{name}({', '.join(f'{k}={v}' for k, v in kw.items())})"
    try:
        with torch.random.fork_rng(devices=[]):
            models = [speaker_cls(**kw) for _ in range(2)]
    except Exception as e:  # anything a foreign constructor raises means the same thing here
        raise ValueError(f"speaker {call} cannot be built {PROTOCOL}: {_first_line(e)}") from None
    if not any(p.requires_grad for p in models[0].parameters()):
        raise ValueError(f"speaker {name} has no trainable parameters: the trainer has nothing to train")
    views = torch.rand(2, 3, pixels, generator=torch.Generator().manual_seed(0))
    given = views.clone()
    population = Population(models)
    try:
        out = population(views)
    except Exception:  # vmap rejects it: try the per-run loop the trainer would fall back to
        population = Population(models, vectorized=False)
        try:
            out = population(views)
        except Exception as e:
            raise ValueError(f"speaker {name}.forward fails on views [B, {pixels}]: {_first_line(e)}") from None
    _check_output(name, out, message_length, vocab_size)
    if not torch.equal(views, given):
        raise ValueError(
            f"speaker {name}.forward changes its input view in place; the view is the env's and shared: "
            "use out-of-place ops (x = x * 2, not x.mul_(2))"
        )
    _check_frozen(name, population, views)
    return population.vectorized


def _check_output(name: str, out: object, message_length: int, vocab_size: int) -> None:
    L, V = message_length, vocab_size
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise ValueError(
            f"speaker {name}.forward must return a pair (logits [B, {L}, {V}], features [B, H]), "
            f"got {type(out).__name__}"
        )
    logits, features = out
    if logits.shape != (2, 3, L, V) or features.dim() != 3 or features.shape[:2] != (2, 3):
        raise ValueError(
            f"speaker {name} must return logits [B, {L}, {V}] and features [B, H], "
            f"got {tuple(logits.shape[1:])} and {tuple(features.shape[1:])}"
        )
    if not (torch.isfinite(logits).all() and torch.isfinite(features).all()):
        raise ValueError(f"speaker {name} returns non-finite logits or features (NaN or inf) on views in [0, 1]")
    if logits.abs().max() > MAX_LOGIT:
        raise ValueError(
            f"speaker {name} returns logits as large as {logits.abs().max().item():.3g} on views in [0, 1]; the "
            f"Gumbel-Softmax divides them by its temperature and overflows: keep them within +-{MAX_LOGIT:g}"
        )
    if not logits.requires_grad:
        raise ValueError(
            f"speaker {name}'s logits do not depend on its parameters (detached, or made under no_grad): "
            "the trainer cannot train it"
        )


def _check_frozen(name: str, population: Population, views: torch.Tensor) -> None:
    """In eval mode a forward must leave parameters and buffers alone and give the same output twice."""
    population.eval()
    before = population.state_dict()
    with torch.no_grad():
        first, second = population(views), population(views)
    population.train()
    changed = [k for k, v in population.state_dict().items() if not torch.equal(v, before[k])]
    if changed:
        raise ValueError(
            f"speaker {name}.forward changes {changed[0]!r} in place; the trainer's optimiser owns the "
            "parameters and runs share none: compute new tensors instead"
        )
    if not all(torch.equal(a, b) for a, b in zip(first, second, strict=True)):
        raise ValueError(
            f"speaker {name}.forward is random in eval mode; it must be deterministic "
            "(the trainer samples the messages from its logits)"
        )


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
