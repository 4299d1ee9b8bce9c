"""What the project's PettingZoo parallel envs share: truncation after ``max_steps``, no rendering,
and the AEC constructor (PettingZoo's module layout: ``parallel_env``, ``raw_env``, ``env``)."""

from __future__ import annotations

from collections.abc import Callable

from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec


class TruncatingParallelEnv(ParallelEnv):
    """A cooperative parallel env whose episodes never terminate and truncate after ``max_steps``."""

    max_steps: int
    _steps: int

    def _end_step(self, observations: dict, rewards: dict, infos: dict) -> tuple:
        """Count the step and return PettingZoo's 5-tuple; the last step also clears ``agents``."""
        self._steps += 1
        done = self._steps >= self.max_steps
        terminations = dict.fromkeys(self.agents, False)
        truncations = dict.fromkeys(self.agents, done)
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def render(self) -> None:
        return None

    def close(self) -> None:
        pass


def aec(parallel_cls: type) -> Callable:
    """``raw_env``: the env in PettingZoo's AEC API (order-enforced by ``parallel_to_aec``)."""

    def raw_env(**kwargs):
        return parallel_to_aec(parallel_cls(**kwargs))

    raw_env.__doc__ = f"{parallel_cls.__module__} in PettingZoo's AEC API."
    return raw_env
