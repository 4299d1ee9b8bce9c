"""Language channel between two agents (thesis ch. 4), as a torch core and a PettingZoo env.

| Import             | ``from envs import language; env = language.parallel_env()``            |
| AEC API            | ``language.env()`` (= ``raw_env()``, via ``parallel_to_aec``)           |
|--------------------|-------------------------------------------------------------------------|
| Actions            | MultiDiscrete ``[vocab_size] * (batch_size * message_length)``          |
| Parallel API       | Yes                                                                     |
| Agents             | ``agents = ["teacher", "student"]`` (the thesis' A and B)               |
| Observation shape  | ``(batch_size, pixels + message_length)`` float32                       |
| Observation values | view pixels in [0, 1], then received tokens in [0, vocab_size - 1]     |

Both agents see the same batch of images, each through its own ``View`` (``view``): by default the
thesis' fixed inversion mask (every pixel inverted with probability ``noise``); ``occlude`` shows a
fixed ``visible`` fraction of the pixels (``overlap``: independent, complementary or row subsets);
``resample`` replaces each pixel by 0 or 1 with probability ``noise``, redrawn every step. Masks are
drawn once from ``seed`` and kept for the env's life; the agents never see the clean image nor the
other's view. The observation space is the same for every view. Each step both send one message per image:
``message_length`` tokens over ``vocab_size`` symbols, flattened row-major as ``[image, token]``.

Observation: the agent's view of the current images, followed by the tokens the other agent sent at
the previous step (zeros after ``reset``). Messages travel while both act, so a message is received one
step after it was sent; agents that want to use it keep their own memory.

Reward (per agent, per step): ``agreement + diversity_weight * diversity`` where ``agreement`` is the
fraction of tokens equal to the other agent's tokens for the same images (the env's counterpart of the
trainer's communication likelihood), and ``diversity`` the mean entropy of each token position over the
batch, in units of ``log(vocab_size)`` (so a constant language scores 0 and cannot win by agreeing).
Episodes never terminate; they truncate after ``max_steps``.

The core below (masks, views, ``exchange``, ``agreement``, ``communication_loss``) is the one the
differentiable trainer calls: it is shape-generic over leading dimensions and keeps autograd graphs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from gymnasium import spaces

from envs.base import TruncatingParallelEnv, aec, at_least, episode_length
from envs.data import Split, Splits, load_splits

AGENTS = ("teacher", "student")


# ----------------------------------------------------------------------------------- torch core
OVERLAPS = ("independent", "complementary", "rows")
READS = {"invert": ("noise",), "occlude": ("visible", "overlap"), "resample": ("noise",)}  # the settings each reads
VIEWS = tuple(READS)


def reading(setting: str) -> tuple[str, ...]:
    """The views that read ``setting`` (a flag given with another view is refused rather than ignored)."""
    return tuple(kind for kind, settings in READS.items() if setting in settings)


@dataclass(frozen=True)
class View:
    """How each agent sees an image (``kind``):

    - ``invert`` (the thesis): a fixed mask per agent inverts each pixel with probability ``noise``.
      The view is an invertible map of the image, so it loses nothing: talking can only regularise.
    - ``occlude``: a fixed subset of ``visible`` of the pixels per agent, the rest 0; ``overlap``
      ``independent`` draws the two subsets independently, ``complementary`` makes them disjoint,
      ``rows`` gives the teacher the first and the student the last ``visible`` of the pixels in
      storage order (a one-channel image's top and bottom rows: split MNIST), the same for every seed.
    - ``resample``: salt-and-pepper noise (each pixel replaced by 0 or 1 with probability ``noise``)
      redrawn for every image every time it is seen; evaluation images get fixed, seeded noise.
    """

    kind: str = "invert"
    noise: float = 0.1
    visible: float = 0.5
    overlap: str = "independent"

    def __post_init__(self) -> None:
        if self.kind not in VIEWS:
            raise ValueError(f"unknown view {self.kind!r}; choose from {', '.join(VIEWS)}")
        if self.overlap not in OVERLAPS:
            raise ValueError(f"unknown overlap {self.overlap!r}; choose from {', '.join(OVERLAPS)}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be a probability in [0, 1], got {self.noise}")
        if not 0.0 < self.visible <= 1.0:
            raise ValueError(f"visible must be a fraction of the pixels in (0, 1], got {self.visible}")
        if self.kind == "occlude" and self.overlap == "complementary" and self.visible > 0.5:
            raise ValueError(f"complementary views need visible <= 0.5 (disjoint halves at most), got {self.visible}")

    def __str__(self) -> str:
        """The view and the settings it reads, as tables name it: ``invert noise 0.1``, ``occlude 0.4 rows``."""
        if self.kind == "occlude":
            return f"occlude {self.visible:g} {self.overlap}"
        return f"{self.kind} noise {self.noise:g}"

    @property
    def resamples(self) -> bool:
        """Whether the view draws fresh noise per image (``uniform`` must be passed to ``views``)."""
        return self.kind == "resample"

    def masks(self, pixels: int, seed: int) -> torch.Tensor:
        """Fixed masks ``[len(AGENTS), pixels]`` drawn from ``seed``: 1.0 = inverted (``invert``) or
        visible (``occlude``); all ones for ``resample``, whose noise is not fixed."""
        generator = torch.Generator().manual_seed(seed)
        if self.kind == "invert":
            return (torch.rand(len(AGENTS), pixels, generator=generator) < self.noise).float()
        if self.kind == "resample":
            return torch.ones(len(AGENTS), pixels)
        kept = math.ceil(self.visible * pixels - 1e-9)
        masks = torch.zeros(len(AGENTS), pixels)
        if self.overlap == "rows":
            masks[0, :kept], masks[1, pixels - kept :] = 1.0, 1.0
        elif self.overlap == "complementary":  # one order split in turn: disjoint, and at 0.5 a partition
            order = torch.randperm(pixels, generator=generator)
            for i in range(len(AGENTS)):
                masks[i, order[i * kept : (i + 1) * kept]] = 1.0
        else:
            for i in range(len(AGENTS)):
                masks[i, torch.randperm(pixels, generator=generator)[:kept]] = 1.0
        return masks

    def apply(self, images: torch.Tensor, mask: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """One agent's view; ``uniform`` (same shape as ``images``, in [0, 1)) drives ``resample``: a
        pixel is replaced where ``uniform < noise``, by 1 where ``uniform < noise / 2``."""
        if self.kind == "invert":
            return images + mask * (1.0 - 2.0 * images)
        if self.kind == "occlude":
            return images * mask
        if uniform is None:
            raise ValueError("the resample view needs uniform noise of the images' shape")
        return torch.where(uniform < self.noise, (uniform < self.noise / 2).to(images.dtype), images)


INVERT = View()


def views(
    images: torch.Tensor, masks: torch.Tensor, view: View = INVERT, uniform: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Each agent's view of the same images; ``masks[..., i, :]`` and ``uniform[..., i, :, :]`` (for
    ``resample``: ``[..., len(AGENTS), *images.shape[-2:]]``) belong to ``AGENTS[i]``."""
    return {
        agent: view.apply(images, masks[..., i, :].unsqueeze(-2), None if uniform is None else uniform[..., i, :, :])
        for i, agent in enumerate(AGENTS)
    }


def fixed_uniform(seed: int, tag: str, start: int, shape: tuple[int, ...], device: torch.device | str = "cpu"):
    """Seeded uniform noise for evaluation images (``tag`` names the split, ``start`` the chunk), so that
    every evaluation of a ``resample`` view sees the same noisy images."""
    key = np.random.SeedSequence([seed, *tag.encode(), start]).generate_state(1)[0]
    return torch.rand(shape, generator=torch.Generator(device).manual_seed(int(key)), device=device)


def exchange(messages: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Route each agent's message to the other: ``received[a]`` is the other agent's message, unchanged
    (same tensor, graph included), so a loss on what is received reaches the sender."""
    teacher, student = AGENTS
    return {teacher: messages[student], student: messages[teacher]}


def agreement(own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """Fraction of tokens that agree, per message (``[..., L, V]`` one-hot or soft -> ``[...]``);
    on soft messages it is the expected agreement, so it is differentiable."""
    return (own * received).sum(-1).mean(-1)


def communication_loss(received: torch.Tensor, own_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the received message under the receiver's own token distribution (eq. 4.2.5's
    likelihood term ``-log p(s_other | x_own)``), averaged over tokens like PyTorch's default reduction
    (the scale the thesis' weights 0.01 / 0.005 were set for), per message ``[...]``."""
    return -(received * torch.log_softmax(own_logits, dim=-1)).sum(-1).mean(-1)


def diversity(messages: torch.Tensor) -> torch.Tensor:
    """Mean entropy of each token position over the batch (dim -3), in units of log(vocab_size)."""
    p = messages.mean(-3)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return entropy.mean(-1) / np.log(messages.shape[-1])


def fixed_views(
    images: torch.Tensor, masks: torch.Tensor, view: View, seed: int, tag: str, chunk: int = 1000
) -> dict[str, torch.Tensor]:
    """Each agent's views of a whole evaluation split ``[n, pixels]`` of one run (masks ``[2, pixels]``),
    in chunks of ``chunk`` images: the noise the trainer's evaluation draws for the same seed and tag."""
    parts = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk]
        noise = fixed_uniform(seed, tag, start, (len(AGENTS), *x.shape), x.device) if view.resamples else None
        parts.append(views(x, masks, view, noise))
    return {a: torch.cat([p[a] for p in parts]) for a in AGENTS}


def split_views(splits: Splits, masks: torch.Tensor, view: View, seed: int) -> dict[str, Splits]:
    """Each agent's view of every split of one run, labels kept (a resample view's noise fixed per split)."""
    parts = {tag: (s, fixed_views(s.images, masks, view, seed, tag)) for tag, s in splits.named().items()}
    return {a: Splits(*(Split(seen[a], s.labels) for s, seen in parts.values()), shape=splits.shape) for a in AGENTS}


# --------------------------------------------------------------------------------- PettingZoo env
class parallel_env(TruncatingParallelEnv):
    metadata: ClassVar[dict] = {"name": "language_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        noise: float = INVERT.noise,
        view: str = INVERT.kind,
        visible: float = INVERT.visible,
        overlap: str = INVERT.overlap,
        message_length: int = 32,
        vocab_size: int = 2,
        batch_size: int = 8,
        max_cycles: int | None = None,  # steps per episode (100); max_steps is its alias
        diversity_weight: float = 1.0,
        seed: int = 0,
        dataset: str = "mnist",
        data_dir: str | Path | None = None,
        images: torch.Tensor | None = None,
        render_mode: str | None = None,
        max_steps: int | None = None,
    ):
        """``images`` (``[n, pixels]`` in [0, 1]) replaces the dataset's training split, e.g. in tests."""
        max_steps = episode_length(max_cycles, max_steps)
        at_least(1, message_length=message_length, batch_size=batch_size)
        at_least(2, vocab_size=vocab_size)
        self.images = images if images is not None else load_splits(dataset, data_dir).train.images
        self.view = View(view, noise, visible, overlap)
        self.masks = self.view.masks(self.images.shape[1], seed)
        self.message_length, self.vocab_size, self.batch_size = message_length, vocab_size, batch_size
        self.max_steps, self.diversity_weight = max_steps, diversity_weight
        self.render_mode = render_mode
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._generator = torch.Generator()

    @functools.cache
    def observation_space(self, agent: str) -> spaces.Box:
        high = np.concatenate([np.ones(self.images.shape[1]), np.full(self.message_length, self.vocab_size - 1)])
        high = np.broadcast_to(high, (self.batch_size, high.size)).astype(np.float32)
        return spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32)

    @functools.cache
    def action_space(self, agent: str) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete(np.full(self.batch_size * self.message_length, self.vocab_size))

    def _observe(self, received: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        idx = torch.randint(len(self.images), (self.batch_size,), generator=self._generator)
        uniform = None
        if self.view.resamples:
            uniform = torch.rand(len(AGENTS), *self.images[idx].shape, generator=self._generator)
        seen = views(self.images[idx], self.masks, self.view, uniform)
        return {a: torch.cat([seen[a], received[a].float()], -1).numpy() for a in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._generator.manual_seed(seed)
        self.agents = list(self.possible_agents)
        self._steps = 0
        silence = torch.zeros(self.batch_size, self.message_length, dtype=torch.long)
        return self._observe(dict.fromkeys(self.agents, silence)), {a: {} for a in self.agents}

    def action_text(self, agent: str) -> str:
        return f"{self.batch_size * self.message_length} integer tokens in [0, {self.vocab_size})"

    def step(self, actions: Mapping[str, np.ndarray]):
        tokens = {
            a: torch.as_tensor(action, dtype=torch.long).reshape(self.batch_size, -1)
            for a, action in self._actions(actions).items()
        }
        one_hot = {a: torch.nn.functional.one_hot(t, self.vocab_size).float() for a, t in tokens.items()}
        received = exchange(one_hot)
        rewards = {
            a: float(agreement(one_hot[a], received[a]).mean() + self.diversity_weight * diversity(one_hot[a]))
            for a in self.agents
        }
        return self._end_step(self._observe(exchange(tokens)), rewards, {a: {} for a in self.agents})


raw_env = aec(parallel_env)
env = raw_env
