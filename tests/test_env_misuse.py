"""Misusing an env is a one-line error that names the agent, what was expected and what was given."""

import numpy as np
import pytest

from tests.test_language_env import make as make_language
from tests.test_network_env import make_env as make_network
from tests.test_teacher_student_env import make as make_teacher_student

ENVS = {"language": make_language, "network": make_network, "teacher_student": make_teacher_student}


def good_actions(env) -> dict:
    return {a: env.action_space(a).sample() for a in env.agents}


@pytest.mark.parametrize("name", ENVS)
def test_stepping_before_reset_or_after_the_end_is_refused(name):
    env = ENVS[name]()
    with pytest.raises(RuntimeError, match=r"^step\(\) before reset\(\): call env.reset\(seed=...\) first$"):
        env.step({a: env.action_space(a).sample() for a in env.possible_agents})
    env.reset(seed=0)
    while env.agents:
        env.step(good_actions(env))
    with pytest.raises(RuntimeError, match=rf"^the episode ended after max_cycles={env.max_steps} steps"):
        env.step({a: env.action_space(a).sample() for a in env.possible_agents})


@pytest.mark.parametrize("name", ENVS)
def test_a_missing_or_unknown_agent_is_named(name):
    env = ENVS[name]()
    env.reset(seed=0)
    actions = good_actions(env)
    first = env.agents[0]
    with pytest.raises(ValueError, match=rf"^no action for {first}: step\(\) takes one for every agent"):
        env.step({a: v for a, v in actions.items() if a != first})
    with pytest.raises(ValueError, match=r"^'ghost' is not an agent of this env now; agents: "):
        env.step({**actions, "ghost": 0})


@pytest.mark.parametrize(
    ("name", "agent", "bad", "message"),
    [
        ("language", "teacher", np.full(12, 0.7), "teacher's action must be 12 integer tokens in [0, 2); got float64"),
        ("language", "student", np.full(12, 2), "student's action must be 12 integer tokens in [0, 2); got int64 of "
         "shape (12,), values 2..2"),
        ("network", "node_1", np.array([1.0, 2.0]), "node_1's action must be two integers [broadcast 0/1, samples to "
         "consume 0..4]; got float64"),
        ("network", "node_0", np.array([0, 5]), "node_0's action must be two integers [broadcast 0/1, samples to "
         "consume 0..4]; got int64 of shape (2,), values 0..5"),
        ("network", "node_2", np.array([], dtype=np.int64), "node_2's action must be two integers [broadcast 0/1, "
         "samples to consume 0..4]; got int64 of shape (0,)"),
        ("teacher_student", "teacher", np.linspace(-2, 0.123456, 13), "teacher's action must be 13 scores in [-1, 1]; "
         "got float64 of shape (13,), values -2..0.1235"),
        ("teacher_student", "teacher", np.full(13, 2.0), "teacher's action must be 13 scores in [-1, 1]; got float64 "
         "of shape (13,), values 2..2"),
        ("teacher_student", "student", 0.5, "student's action must be 0 (skip the batch) or 1 (take the update); got "
         "float64 of shape ()"),
    ],
)  # fmt: skip
def test_a_float_or_out_of_range_action_is_named(name, agent, bad, message):
    env = ENVS[name]()
    env.reset(seed=0)
    with pytest.raises(ValueError) as error:
        env.step({**good_actions(env), agent: bad})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ENVS)
def test_max_cycles_is_the_episode_length_and_max_steps_its_alias(name):
    length = ENVS[name]().max_steps  # each helper gives max_steps
    env, steps = ENVS[name](max_cycles=length), 0
    env.reset(seed=0)
    while env.agents:
        env.step(good_actions(env))
        steps += 1
    assert steps == length
    with pytest.raises(ValueError, match=f"^max_steps is an alias of max_cycles: give one, not {length} and 3$"):
        ENVS[name](max_cycles=3)


def test_max_cycles_alone_sets_the_episode_length():
    import torch

    from envs import language

    env = language.parallel_env(images=torch.rand(20, 16), batch_size=2, message_length=3, max_cycles=2)
    env.reset(seed=0)
    env.step(good_actions(env))
    assert env.agents
    env.step(good_actions(env))
    assert not env.agents


def test_data_are_given_whole_or_not_at_all():
    import torch

    from envs import network, teacher_student

    with pytest.raises(ValueError, match=r"^give images, labels, val_images, val_labels and shape together"):
        network.parallel_env(images=torch.rand(10, 64))
    with pytest.raises(ValueError, match=r"^give images, labels, teacher_logits, val_images and val_labels together"):
        teacher_student.parallel_env(images=torch.rand(10, 64))
