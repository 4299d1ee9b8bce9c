"""Learned teachers (thesis ch. 3 as RL): a policy scores the stack and learns from the env's reward.

The teacher/student env rewards each step with the drop of the student's validation loss, or (``reward=
"advantage"``) with that drop beyond what an update on a random minibatch of the same stack gives the same
student: the plain drop rewarded updates that change little (the policy learned to send the easiest samples),
the advantage rewards the choice alone. Two learners:

- ``reinforce``: a ``TeacherPolicy`` scores every stack sample; the ``batch_size`` samples sent are a
  Plackett-Luce draw (Gumbel top-k) from those scores, so the log-probability of the sent set is exact
  and ``trainers.reinforce`` gives the gradient (each selection rewarded with the reward summed over
  the next ``horizon`` updates, a running-mean baseline, an entropy bonus on the softmax of the
  scores). Episodes start from partly trained students (``warmup``) and the teacher observes the
  student's training progress, so it learns selection over whole training runs.
- ``ppo``: SB3 PPO through SuperSuit on the teacher alone (the student always updates), its action being
  a Gaussian score per sample (``trainers.sb3``).

Either becomes a difficulty measure for the batched student trainer (``register``): at evaluation the
teacher sends its ``batch_size`` highest-scoring samples, as with the heuristics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.teacher_student import TeacherPolicy
from envs.base import at_least
from envs.selection import MEASURES, Measure, Stack
from envs.teacher_student import REWARDS, features, parallel_env
from trainers.base import check_fields, option
from trainers.files import save_atomic, save_json, write_atomic
from trainers.gumbel import gumbel_noise
from trainers.reinforce import Reinforce

POLICIES = ("reinforce", "ppo")


@dataclass(frozen=True)
class PolicyConfig:
    episodes: int = option(20, "fresh students a learned teacher trains on")
    steps: int = option(300, "student updates per episode")
    stack_size: int = option(5, "the learned teachers' stack size (minibatches)")
    batch_size: int = option(32, "samples the teacher sends per update")
    target: str = option("true", "targets the learned teachers send", choices=("soft", "true"))
    lr: float = option(3e-3, "the learned teachers' Adam learning rate")
    entropy_weight: float = option(0.01, "REINFORCE teacher's entropy bonus")
    update_every: int = option(10, "REINFORCE teacher: env steps per policy update")
    reward_samples: int = option(1000, "validation images of the env's reward")
    warmup: int = option(5_000, "episodes start from a student given up to this many plain updates (uniformly "
                         "drawn), so the teacher learns later training too; 0: fresh students")
    horizon: int = option(1, "REINFORCE teacher: each selection is rewarded with the reward summed over this many "
                          "updates (1: the next update only)")
    seed: int = option(0, "the learned teachers' training seed (initial weights, draws, episodes' students)")
    observe_labels: bool = option(False, "the learned teachers also see the teacher's and the student's "
                                  "probability of each sample's given label (what betrays a corrupted label)")
    reward: str = option("advantage", "the env's reward: the validation-loss drop, or its advantage over an update "
                         "on a random minibatch of the same stack from the same state", choices=REWARDS)

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(1, **{n: getattr(self, n) for n in ("episodes", "steps", "stack_size", "batch_size", "update_every",
                                                     "horizon")})
        at_least(0, warmup=self.warmup)


def plackett_luce(scores: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` indices drawn without replacement with probability proportional to ``exp(score)`` (Gumbel
    top-k), and the exact log-probability of that ordered draw."""
    gumbel = gumbel_noise(torch.rand(scores.shape, generator=generator))
    chosen = (scores.detach() + gumbel).topk(k).indices
    return chosen, plackett_luce_log_prob(scores, chosen)


def plackett_luce_log_prob(scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Log-probability of drawing ``chosen`` in that order, without replacement, with probability
    proportional to ``exp(score)``."""
    picked = scores[chosen]
    # log P = sum_i [s_(i) - logsumexp(scores not yet chosen)]; the not-yet-chosen set shrinks by one each pick
    remaining = torch.logcumsumexp(picked.flip(0), 0).flip(0)
    others = scores.clone()
    others[chosen] = float("-inf")
    rest = torch.logsumexp(others, 0)
    denominators = torch.logaddexp(remaining, rest.expand_as(remaining))
    return (picked - denominators).sum()


def _env(splits, teacher_logits: torch.Tensor, config: PolicyConfig) -> parallel_env:
    return parallel_env(splits.train.images, splits.train.labels, teacher_logits, splits.val.images, splits.val.labels,
                        stack_size=config.stack_size, batch_size=config.batch_size, max_cycles=config.steps,
                        reward_samples=config.reward_samples, warmup=config.warmup, reward=config.reward,
                        observe_labels=config.observe_labels)


def _action(chosen: torch.Tensor, stack: int, target: str) -> np.ndarray:
    """The env action that sends ``chosen`` (scores 1 for them, -1 for the rest) with the target kind."""
    action = -np.ones(stack + 1, dtype=np.float32)
    action[chosen.numpy()] = 1.0
    action[-1] = 1.0 if target == "soft" else -1.0
    return action


def windowed_returns(rewards: torch.Tensor, horizon: int) -> torch.Tensor:
    """Each step's reward summed over it and the next ``horizon - 1`` steps (fewer at the episode's end):
    with rewards that are validation-loss drops, the drop over ``horizon`` updates."""
    padded = torch.cat([rewards, rewards.new_zeros(horizon - 1)])
    return padded.unfold(0, horizon, 1).sum(-1)


def train_reinforce(splits, teacher_logits: torch.Tensor, config: PolicyConfig, seed: int,
                    progress: Callable[[int], None] | None = None) -> TeacherPolicy:
    """A ``TeacherPolicy`` trained by REINFORCE in the teacher/student env."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = TeacherPolicy(teacher_logits.shape[-1], observe_labels=config.observe_labels)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    reinforce = Reinforce(config.entropy_weight)
    generator = torch.Generator().manual_seed(seed)
    env = _env(splits, teacher_logits, config)
    for episode in range(config.episodes):
        obs, _ = env.reset(seed=seed * 10_000 + episode)
        seen, picks, rewards = [], [], []
        while env.agents:
            seen.append(torch.from_numpy(obs["teacher"]))
            with torch.no_grad():
                chosen, _ = plackett_luce(policy(seen[-1]), config.batch_size, generator)
            picks.append(chosen)
            obs, reward, *_ = env.step({"teacher": _action(chosen, len(seen[-1]), config.target), "student": 1})
            rewards.append(reward["teacher"])
            if progress:
                progress(1)
        returns = windowed_returns(torch.tensor(rewards), config.horizon)
        for start in range(0, len(rewards), config.update_every):  # the episode's selections, scored anew
            part = slice(start, start + config.update_every)
            scores = [policy(x) for x in seen[part]]
            log_probs = torch.stack([plackett_luce_log_prob(sc, c) for sc, c in zip(scores, picks[part], strict=True)])
            entropies = torch.stack([-(torch.softmax(sc, 0) * torch.log_softmax(sc, 0)).sum() for sc in scores])
            loss = reinforce.loss(log_probs.view(1, -1), returns[part].view(1, -1), entropies.view(1, -1))
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
    return policy.eval()


def train_ppo(splits, teacher_logits: torch.Tensor, config: PolicyConfig, seed: int, logdir: Path | None = None):
    """SB3 PPO on the teacher alone (the student always updates); returns the model."""
    from envs.base import Scripted
    from trainers.sb3 import train

    env = Scripted(_env(splits, teacher_logits, config), {"student": lambda observation: 1})
    model, _ = train(env, "ppo", config.episodes * config.steps, seed, logdir, n_steps=config.steps,
                     batch_size=max(2, config.steps // 5), learning_rate=config.lr)
    return model


def register(name: str, scorer: Callable[[torch.Tensor], torch.Tensor], observe_labels: bool = False) -> str:
    """Make ``scorer`` (the env teacher's observation ``[stack, 2C+3]``, ``[stack, 2C+5]`` with ``observe_labels``
    -> scores ``[stack]``) the measure ``learned_<name>``."""
    key = f"learned_{name}"

    @torch.no_grad()
    def measure(stack: Stack, generator: torch.Generator) -> torch.Tensor:
        labels = stack.labels if observe_labels else None
        return scorer(features(stack.teacher_probs, stack.student_probs, stack.step, labels))

    MEASURES[key] = Measure(measure, reads_labels=observe_labels)
    return key


def save_policy(learned, path: Path, observe_labels: bool) -> Path:
    """Write a learned teacher (a REINFORCE ``TeacherPolicy`` or an SB3 PPO model) where ``load_scorer`` reads it."""
    if isinstance(learned, TeacherPolicy):
        file = path.with_suffix(".pt")
        save_atomic(file, {"state": learned.state_dict(), "classes": learned.classes, "observe_labels": observe_labels})
        return file

    def save_zip(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: SB3 would add ".zip" to a path's name
            learned.save(handle)

    write_atomic(path.with_suffix(".zip"), save_zip)
    save_json(path.with_suffix(".json"), {"observe_labels": observe_labels})
    return path.with_suffix(".zip")


def load_scorer(file: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """A saved learned teacher's scorer and whether it observes labels (``register``'s arguments)."""
    if file.suffix == ".pt":
        saved = torch.load(file, weights_only=True)
        policy = TeacherPolicy(saved["classes"], observe_labels=saved["observe_labels"])
        policy.load_state_dict(saved["state"])
        return policy.eval(), saved["observe_labels"]
    from stable_baselines3 import PPO

    return ppo_scorer(PPO.load(file)), json.loads(file.with_suffix(".json").read_text())["observe_labels"]


def ppo_scorer(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The PPO policy's deterministic scores (its Gaussian's mean) for one stack."""

    def scores(observed: torch.Tensor) -> torch.Tensor:
        action, _ = model.predict(observed.numpy()[None], deterministic=True)
        return torch.from_numpy(np.asarray(action[0][:-1], dtype=np.float32))

    return scores
