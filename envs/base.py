"""What the project's PettingZoo parallel envs share: truncation after ``max_steps``, no rendering,
the AEC constructor (PettingZoo's module layout: ``parallel_env``, ``raw_env``, ``env``), and
``Scripted``, which hides agents driven by fixed policies."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec


def episode_length(max_cycles: int | None, max_steps: int | None, default: int = 100) -> int:
    """Steps per episode: ``max_cycles`` (PettingZoo's keyword) or its older alias ``max_steps``, else
    ``default``; at least 1."""
    if None not in (max_cycles, max_steps) and max_cycles != max_steps:
        raise ValueError(f"max_steps is an alias of max_cycles: give one, not {max_steps} and {max_cycles}")
    length = next((v for v in (max_cycles, max_steps) if v is not None), default)
    if length < 1:
        raise ValueError(f"max_cycles must be >= 1, got {length}")
    return length


def given_whole(**data: object) -> bool:
    """Whether a caller brought its own data: all of ``data`` (True) or none of it (False, the env loads
    its defaults); a part of it is a one-line error."""
    given = [value is not None for value in data.values()]
    if any(given) and not all(given):
        *names, last = data
        raise ValueError(f"give {', '.join(names)} and {last} together, or none of them")
    return all(given)


def check_type(name: str, value: object, annotation: object) -> None:
    """``value`` holds ``annotation``'s type where that is a number, text, a switch, a tuple of whole numbers or a
    config (``X | None`` allows None): a ``"32"`` or a NaN is one line naming ``name`` here, not a TypeError deep
    in torch. Other types (tensors, mappings) are left to the code that reads them."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(members) < len(typing.get_args(annotation)):
            return
        annotation = members[0] if len(members) == 1 else object
    base = typing.get_origin(annotation) or annotation
    whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    if base is bool:
        ok, what = isinstance(value, bool | np.bool_), "True or False"
    elif base is int:
        ok, what = whole(value), "a whole number"
    elif base is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    elif base is str:
        ok, what = isinstance(value, str), "text"
    elif base is tuple and typing.get_args(annotation)[:1] == (int,):
        ok, what = isinstance(value, tuple | list) and all(whole(v) for v in value), "a tuple of whole numbers"
    elif dataclasses.is_dataclass(base):
        ok, what = isinstance(value, base), f"a {base.__name__}"
    else:
        return
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


def at_least(low: float, **values: float) -> None:
    """Each of ``values`` is >= ``low``: the first that is not is named, with its value."""
    for name, value in values.items():
        if value < low:
            raise ValueError(f"{name} must be >= {low:g}, got {value}")


def above(low: float, **values: float) -> None:
    """Each of ``values`` is > ``low``: the first that is not is named, with its value."""
    for name, value in values.items():
        if value <= low:
            raise ValueError(f"{name} must be > {low:g}, got {value}")


def checked_arguments(function: Callable) -> Callable:
    """``function`` whose arguments are checked against their annotations (``check_type``) at every call."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        hints = typing.get_type_hints(function)
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            if name in hints:
                check_type(name, value, hints[name])
        return function(*args, **kwargs)

    return checked


def trains(method: Callable) -> Callable:
    """For an env whose ``reset``/``step`` train a model inside: run them with gradients on and outside
    inference mode, so they are the same under a caller's ``torch.no_grad()`` or
    ``torch.inference_mode()`` (the way torchrl's collectors step envs)."""

    @functools.wraps(method)
    def with_gradients(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return method(*args, **kwargs)

    return with_gradients


class TruncatingParallelEnv(ParallelEnv):
    """A cooperative parallel env whose episodes never terminate and truncate after ``max_steps``. A subclass's
    constructor and ``reset`` check their arguments' types, and its spaces refuse an agent it does not have."""

    max_steps: int
    _steps: int

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = checked_arguments(cls.__init__)
        if "reset" in vars(cls):
            cls.reset = _seeded(cls.reset)
        for name in ("observation_space", "action_space"):
            if name in vars(cls):
                setattr(cls, name, _of_known_agents(vars(cls)[name]))

    def action_text(self, agent: str) -> str:
        """What ``agent``'s action must be, in words, for the errors of ``_actions``."""
        return str(self.action_space(agent))

    def _actions(self, actions: Mapping) -> dict[str, np.ndarray]:
        """Every agent's action as an array of its space's dtype, or a one-line error that names the agent,
        what was expected and what was given: stepping before ``reset`` or after the episode ended, a
        missing or unknown agent, a float where integers are expected, a wrong shape or range."""
        if not hasattr(self, "_steps"):
            raise RuntimeError("step() before reset(): call env.reset(seed=...) first")
        if not self.agents:
            raise RuntimeError(f"the episode ended after max_cycles={self.max_steps} steps: call env.reset() first")
        for agent in self.agents:
            if agent not in actions:
                raise ValueError(f"no action for {agent}: step() takes one for every agent in env.agents")
        for agent in actions:
            if agent not in self.agents:
                raise ValueError(f"{agent!r} is not an agent of this env now; agents: {', '.join(self.agents)}")
        checked = {}
        for agent in self.agents:
            given, space = np.asarray(actions[agent]), self.action_space(agent)
            action = given.astype(space.dtype) if isinstance(space, spaces.Box) else given  # floats stay refused
            if not space.contains(action):
                values = ""
                if given.size and given.dtype.kind in "biuf":
                    ends = [f"{v:.4g}" if given.dtype.kind == "f" else f"{v}" for v in (given.min(), given.max())]
                    values = ", values {}..{}".format(*ends)
                raise ValueError(f"{agent}'s action must be {self.action_text(agent)}; got {given.dtype} of shape "
                                 f"{given.shape}{values}")
            checked[agent] = action
        return checked

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


def _seeded(reset: Callable) -> Callable:
    """``reset`` whose seed is None or a whole number (numpy's too, passed on as an int)."""

    @functools.wraps(reset)
    def seeded(self, seed: int | None = None, options: dict | None = None):
        check_type("seed", seed, int | None)
        return reset(self, seed=None if seed is None else int(seed), options=options)

    return seeded


def _of_known_agents(space: Callable) -> Callable:
    """A space method that refuses an agent the env does not have (PettingZoo would build it a space)."""

    @functools.wraps(space)
    def of_agent(self, agent: str):
        if agent not in self.possible_agents:
            raise ValueError(f"{agent!r} is not an agent of this env; agents: {', '.join(self.possible_agents)}")
        return space(self, agent)

    return of_agent


def aec(parallel_cls: type) -> Callable:
    """``raw_env``: the env in PettingZoo's AEC API (order-enforced by ``parallel_to_aec``)."""

    def raw_env(**kwargs):
        return parallel_to_aec(parallel_cls(**kwargs))

    raw_env.__doc__ = f"{parallel_cls.__module__} in PettingZoo's AEC API."
    return raw_env


class Scripted(ParallelEnv):
    """``env`` with some agents driven by fixed policies (``observation -> action``); only the others are
    exposed. E.g. the teacher/student env with a student that always takes the update, so one RL policy
    (or SB3 through SuperSuit, which needs agents with identical spaces) learns the teacher alone."""

    def __init__(self, env: ParallelEnv, policies: Mapping[str, Callable]):
        unknown = set(policies) - set(env.possible_agents)
        if unknown:
            raise ValueError(f"no agent(s) {', '.join(sorted(unknown))} in {env.metadata.get('name', env)}")
        self.env, self.policies = env, dict(policies)
        self.possible_agents = [a for a in env.possible_agents if a not in self.policies]
        self.metadata, self.render_mode = env.metadata, getattr(env, "render_mode", None)
        self._last: dict = {}

    @property
    def agents(self) -> list[str]:
        return [a for a in self.env.agents if a not in self.policies]

    def observation_space(self, agent: str):
        return self.env.observation_space(agent)

    def action_space(self, agent: str):
        return self.env.action_space(agent)

    def _keep(self, values: dict) -> dict:
        return {a: v for a, v in values.items() if a not in self.policies}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._last, infos = self.env.reset(seed=seed, options=options)
        return self._keep(self._last), self._keep(infos)

    def step(self, actions: Mapping):
        scripted = {a: p(self._last[a]) for a, p in self.policies.items() if a in self._last}
        self._last, *rest = self.env.step({**actions, **scripted})
        return self._keep(self._last), *(self._keep(r) for r in rest)

    def render(self) -> None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
