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
)
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


@pytest.mark.parametrize("name", ENVS)
def test_a_space_of_an_unknown_agent_and_a_seed_of_the_wrong_type_are_refused(name):
    env = ENVS[name]()
    for space in (env.observation_space, env.action_space):
        with pytest.raises(ValueError, match=r"^'eve' is not an agent of this env; agents: "):
            space("eve")
    with pytest.raises(ValueError, match=r"^seed must be a whole number, got 'a' \(str\)$"):
        env.reset(seed="a")
    env.reset(seed=np.int64(3))  # numpy's whole numbers are whole numbers


def test_constructor_arguments_of_the_wrong_type_are_one_line():
    import torch

    from envs import language, network

    images = torch.rand(10, 64)
    with pytest.raises(ValueError, match=r"^message_length must be a whole number, got '32' \(str\)$"):
        language.parallel_env(message_length="32", images=images)
    with pytest.raises(ValueError, match=r"^noise must be a finite number, got nan"):
        language.parallel_env(noise=float("nan"), images=images)
    with pytest.raises(ValueError, match=r"^nodes must be a whole number, got 2.5 \(float\)$"):
        network.parallel_env(nodes=2.5)


@pytest.mark.parametrize(("make", "said"), [
    ("LanguageConfig(lr=float('nan'))", "lr must be a finite number, got nan"),
    ("LanguageConfig(view='blur')", "unknown view 'blur'; choose from invert, occlude, resample"),
    ("LanguageConfig(hidden=(3, 'a'))", "hidden must be a tuple of whole numbers"),
    ("LanguageConfig(steps=True)", "steps must be a whole number, got True"),
    ("TeacherConfig(patience=0)", "patience must be >= 1, got 0"),
    ("StudentConfig(eval_every=0)", "eval_every must be >= 1, got 0"),
    ("PolicyConfig(horizon=0)", "horizon must be >= 1, got 0"),
    ("NetworkConfig(nodes='4')", "nodes must be a whole number, got '4'"),
])
def test_configs_check_their_fields_on_construction(make, said):
    from trainers.language.config import LanguageConfig  # noqa: F401
    from trainers.network.config import NetworkConfig  # noqa: F401
    from trainers.teacher_student.policy import PolicyConfig  # noqa: F401
    from trainers.teacher_student.student import StudentConfig  # noqa: F401
    from trainers.teacher_student.teachers import TeacherConfig  # noqa: F401

    with pytest.raises(ValueError) as e:
        eval(make)
    assert str(e.value).startswith(said)
