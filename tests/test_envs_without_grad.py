"""Envs that train a model inside step the same under a caller's no_grad or inference_mode (torchrl's
collectors step envs that way)."""

import contextlib

import pytest
import torch

from tests.test_language_env import make as make_language
from tests.test_network_env import make_env as make_network
from tests.test_teacher_student_env import make as make_teacher_student


def rewards_of(make, context) -> list[dict]:
    env, out = make(), []
    with context():
        env.reset(seed=3)
        for _ in range(3):
            actions = {a: env.action_space(a).sample() for a in env.agents}
            out.append(env.step(actions)[1])
    return out


@pytest.mark.parametrize(
    "make", [make_language, make_network, make_teacher_student], ids=["language", "network", "teacher_student"]
)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_stepping_without_grad_trains_as_with_it(make, context):
    plain = rewards_of(lambda: seeded(make()), contextlib.nullcontext)
    inside = rewards_of(lambda: seeded(make()), context)
    assert inside == plain and any(r != 0 for step in plain for r in step.values())  # it trained, the same way


def seeded(env):
    for agent in env.possible_agents:
        env.action_space(agent).seed(7)
    return env
