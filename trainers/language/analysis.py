"""What the messages say: language analysis of two speakers (thesis ch. 4, beyond its tables).

Every measure reads hard (argmax) messages ``[N, L, V]`` of held-out images; probes are trained on the
training split, chosen on validation and scored on test (``trainers.probe``). Compared with EGG's
``egg.core.language_analysis``: its topographic similarity is the same statistic (Spearman correlation
over all pairs ``i < j`` of a message distance and an input distance; for fixed-length messages its
normalised edit distance ranks pairs as our Hamming distance does); its ``entropy`` is our
``message_entropy`` (plug-in entropy of whole messages, in bits); EGG's mutual information is a plug-in
estimate over discrete inputs, which does not exist for images, so we bound it with a probe instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.data import Split, Splits
from envs.language import AGENTS
from trainers.gumbel import hard_message
from trainers.probe import accuracy, fit_linear_probes, train_linear_probes

TEACHER, STUDENT = AGENTS
TOPSIM_IMAGES = 1000


def bit_entropy(messages: torch.Tensor) -> torch.Tensor:
    """Entropy of each message position over the messages ``[N, L, V]``, in bits ``[L]``."""
    p = messages.float().mean(0)
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(-1)


def distinct_fraction(messages: torch.Tensor) -> float:
    """Fraction of the messages that are distinct (1: every image its own message; 1/N: one message)."""
    return len(torch.unique(messages.argmax(-1), dim=0)) / len(messages)


def message_entropy(messages: torch.Tensor) -> float:
    """Plug-in entropy of whole messages, in bits (EGG's ``entropy``); at most log2(N)."""
    _, counts = torch.unique(messages.argmax(-1), dim=0, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of ``x`` with ties given their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D samples (ties averaged); 0 when either is constant. The sums run in
    numpy (one thread, one order): torch's threaded sums of half a million pairs changed the last digit with the
    thread count, and a run must give the same numbers on one thread or two."""
    rx, ry = _ranks(x.double()).cpu().numpy(), _ranks(y.double()).cpu().numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.sqrt((rx * rx).sum()) * np.sqrt((ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else 0.0


def topographic_similarity(messages: torch.Tensor, images: torch.Tensor) -> float:
    """Spearman correlation between the Hamming distances of messages and the Euclidean distances of the
    (clean) images, over every pair ``i < j`` of the N given: N(N-1)/2 pairs (499,500 for 1,000)."""
    tokens = messages.argmax(-1)
    i, j = torch.triu_indices(len(tokens), len(tokens), offset=1)
    hamming = (tokens[i] != tokens[j]).sum(-1)
    euclidean = torch.cdist(images.double(), images.double())[i, j]
    return spearman(hamming, euclidean)


def probe_information(
    features: Sequence[Splits], epochs: int, lr: float, seeds: Sequence[int]
) -> list[tuple[float, float]]:
    """For each feature set, a linear probe's test accuracy (%) and the lower bound it gives on the mutual
    information between its input and the class, ``I >= H(class) - CE`` in bits (test-set class entropy
    and probe cross-entropy; floored at 0, where the bound says nothing). The probe is chosen on
    validation cross-entropy, the quantity the bound is made of."""
    out = []
    for probe, f in zip(train_linear_probes(features, seeds, epochs, lr=lr, by="loss"), features, strict=True):
        with torch.no_grad():
            ce = F.cross_entropy(probe(f.test.images), f.test.labels).item() / math.log(2)
        prior = torch.bincount(f.test.labels).double() / len(f.test.labels)
        h_class = float(-(prior[prior > 0] * torch.log2(prior[prior > 0])).sum())
        out.append((accuracy(probe, f.test).item(), max(0.0, h_class - ce)))
    return out


def intervention(
    features: Sequence[Splits], received: Sequence[Splits], epochs: int, lr: float, seeds: Sequence[int]
) -> list[dict[str, float]]:
    """Causal effect of the channel on a decision, per run: a linear probe on [own features, received
    message] scored on test with the true message and with the message of another test image (a seeded
    derangement); ``drop`` is the loss in points."""
    joint = [Splits(*(Split(torch.cat([f.images, m.images], -1), f.labels) for f, m in _pairs(fs, ms)))
             for fs, ms in zip(features, received, strict=True)]
    out = []
    for probe, j, f, m, seed in zip(train_linear_probes(joint, seeds, epochs, lr=lr), joint, features, received, seeds,
                                    strict=True):
        n = len(m.test.images)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        other = torch.empty_like(order)
        other[order] = order.roll(-1)  # every image gets the message of a different one
        swapped = Split(torch.cat([f.test.images, m.test.images[other]], -1), f.test.labels)
        true, shuffled = accuracy(probe, j.test).item(), accuracy(probe, swapped).item()
        out.append({"joint_probe": true, "joint_probe_other_message": shuffled, "intervention_drop": true - shuffled})
    return out


def _pairs(a: Splits, b: Splits):
    return zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True)


@torch.no_grad()
def _speak(speaker: nn.Module, seen: Splits) -> tuple[Splits, Splits]:
    """A speaker's (hard messages flattened to ``[N, L * V]``, features) on every split, in one pass."""
    speaker.eval()
    messages, features = {}, {}
    for tag, split in seen.named().items():
        logits, hidden = zip(*(speaker(x) for x in split.images.split(5000)), strict=True)
        messages[tag] = Split(hard_message(torch.cat(logits)).flatten(-2), split.labels)
        features[tag] = Split(torch.cat(hidden), split.labels)
    return Splits(**messages), Splits(**features)


def analyse(
    runs: Sequence[tuple[Mapping[str, nn.Module], Mapping[str, Splits], int]],
    clean_test: torch.Tensor,
    message_shape: tuple[int, int],
    epochs: int = 10,
    lr: float = 3e-3,
) -> list[dict[str, float]]:
    """Every measure for each run's pair of speakers; a run is ``(speakers, seen, seed)``: ``{agent:
    module}`` with the speaker protocol of agents/language.py, each agent's views of every split (e.g.
    ``split_views``) and the seed of its probes. ``clean_test`` are the clean test images: topographic
    similarity is measured against them (``_topsim``) and against the speaker's own view (``_topsim_view``,
    what it could encode). The runs' probes of each kind train together (``train_linear_probes``).
    Keys: per agent ``<agent>_bit_entropy`` (mean over positions), ``_distinct``, ``_message_entropy``,
    ``_message_probe``, ``_message_bits``, ``_topsim``, ``_topsim_view``; the student's ``feature_probe``,
    ``joint_probe``, ``joint_probe_other_message``, ``intervention_drop``, ``message_gain`` (joint probe minus
    feature probe: what the message adds to the student's own features); and ``agreement`` of the two
    agents' test messages."""
    spoken = [{a: _speak(speakers[a], seen[a]) for a in AGENTS} for speakers, seen, _ in runs]
    views = [seen for _, seen, _ in runs]
    seeds = [seed for *_, seed in runs]
    information = iter(probe_information([s[a][0] for s in spoken for a in AGENTS], epochs, lr,
                                         [seed for seed in seeds for _ in AGENTS]))
    features = [s[STUDENT][1] for s in spoken]
    feature_probe = fit_linear_probes(features, seeds, epochs, lr=lr)
    interventions = intervention(features, [s[TEACHER][0] for s in spoken], epochs, lr, seeds)
    results = []
    for s, seen, feature, joint in zip(spoken, views, feature_probe, interventions, strict=True):
        out: dict[str, float] = {}
        for a in AGENTS:
            messages = s[a][0].test.images.unflatten(-1, message_shape)
            out[f"{a}_bit_entropy"] = bit_entropy(messages).mean().item()
            out[f"{a}_distinct"] = distinct_fraction(messages)
            out[f"{a}_message_entropy"] = message_entropy(messages)
            out[f"{a}_message_probe"], out[f"{a}_message_bits"] = next(information)
            out[f"{a}_topsim"] = topographic_similarity(messages[:TOPSIM_IMAGES], clean_test[:TOPSIM_IMAGES])
            out[f"{a}_topsim_view"] = topographic_similarity(messages[:TOPSIM_IMAGES],
                                                             seen[a].test.images[:TOPSIM_IMAGES])
        out["feature_probe"] = feature
        out |= joint
        out["message_gain"] = out["joint_probe"] - out["feature_probe"]
        t, m = (s[a][0].test.images.unflatten(-1, message_shape) for a in AGENTS)
        out["agreement"] = (t * m).sum(-1).mean().item()
        results.append(out)
    return results
