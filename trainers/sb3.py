"""Stable-Baselines3 on our PettingZoo envs through SuperSuit: one policy shared by every exposed agent.

SuperSuit turns a parallel env whose agents share their spaces into a vector env with one slot per
agent. Its SB3 adapter lacks ``seed()``, which SB3 calls with the algorithm's seed, so
``SeededVecEnv`` keeps that seed and hands it to the next reset: the same seed gives the same run.
Needs the ``rl`` extra: ``pip install -e ".[rl]"``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from gymnasium import spaces
from pettingzoo import ParallelEnv
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecMonitor
from supersuit import concat_vec_envs_v1, pettingzoo_env_to_vec_env_v1
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}
ON_POLICY = ("ppo", "a2c")  # any action space; SAC and TD3 need a Box (the teacher's scores)
COLUMNS = {  # what each algorithm's table shows beside the timesteps and the episode reward
    "ppo": ("train/value_loss", "train/entropy_loss"),
    "a2c": ("train/value_loss", "train/entropy_loss"),
    "sac": ("train/critic_loss", "train/actor_loss", "train/ent_coef"),
    "td3": ("train/critic_loss", "train/actor_loss"),
}


class SeededVecEnv(SB3VecEnvWrapper):
    """SuperSuit's SB3 adapter with the ``seed()`` SB3 calls: the seed goes to the next ``reset``."""

    def __init__(self, venv):
        super().__init__(venv)
        self._seed: int | None = None

    def seed(self, seed: int | None = None) -> list:
        self._seed = seed
        return [seed] * self.num_envs

    def reset(self, seed: int | None = None, options: dict | None = None):
        seed, self._seed = (self._seed if seed is None else seed), None  # later resets continue the stream
        observations, self.reset_infos = self.venv.reset(seed=seed, options=options)
        return observations


def vec_env(env: ParallelEnv) -> VecMonitor:
    """The SB3 vector env of a parallel env (one slot per agent), with episode statistics."""
    with warnings.catch_warnings():  # SB3 warns of every env without a render mode; ours never render
        warnings.filterwarnings("ignore", "The `render_mode` attribute is not defined")
        return VecMonitor(SeededVecEnv(concat_vec_envs_v1(pettingzoo_env_to_vec_env_v1(env), 1, 0, "gymnasium")))


class Recorder(KVWriter):
    """Keeps every value SB3 logs (one dict per dump), e.g. to compare two runs' first losses."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append({k: float(v) for k, v in key_values.items() if isinstance(v, int | float)})

    def close(self) -> None:
        pass


def train(
    env: ParallelEnv,
    algorithm: str = "ppo",
    timesteps: int = 2048,
    seed: int = 0,
    logdir: Path | None = None,
    **kwargs: Any,
) -> tuple[BaseAlgorithm, list[dict[str, float]]]:
    """Train ``algorithm`` with an MLP policy on ``env`` for ``timesteps`` agent-steps (``kwargs`` go to
    the algorithm, ``device`` included); TensorBoard scalars go to ``logdir``. Returns the model and
    every logged row. SAC and TD3 refuse envs whose actions are not a Box, in one line."""
    space = env.action_space(env.possible_agents[0])
    if algorithm not in ON_POLICY and not isinstance(space, spaces.Box):
        raise ValueError(
            f"{algorithm.upper()} needs a Box action space; this env's actions are {type(space).__name__}: "
            f"use {' or '.join(ON_POLICY)}"
        )
    kwargs.setdefault("device", "cpu")  # SB3's MLP policies are small: a GPU only pays with --device cuda
    model = ALGORITHMS[algorithm]("MlpPolicy", vec_env(env), seed=seed, verbose=0, **kwargs)
    recorder = Recorder()
    outputs: list[KVWriter] = [recorder]
    if logdir is not None:
        outputs.append(TensorBoardOutputFormat(str(logdir)))
    model.set_logger(Logger(str(logdir) if logdir else None, outputs))
    model.learn(total_timesteps=timesteps, log_interval=1)  # A2C: every update (default 100th); SAC/TD3: episode
    model.logger.dump(model.num_timesteps)  # the last update's losses are otherwise never written
    return model, recorder.rows


def updates(rows: list[dict[str, float]], algorithm: str) -> list[dict[str, float]]:
    """One row per rollout with the losses of the update that followed it. PPO and A2C log a rollout's
    statistics before training on it, so SB3's rows carry the previous update's losses (none in the
    first) and the last update's come in the final dump; SAC and TD3 train as they go: rows as logged."""
    rollouts = [r for r in rows if "time/total_timesteps" in r]
    if algorithm not in ON_POLICY:
        return rollouts
    losses = [{k: v for k, v in r.items() if k.startswith("train/")} for r in rows[1:]]  # the next dump's
    stats = [{k: v for k, v in r.items() if not k.startswith("train/")} for r in rollouts]
    return [r | a for r, a in zip(stats, losses, strict=True)]
