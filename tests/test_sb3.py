"""SB3 through SuperSuit on each of our envs: a short PPO run completes, and the same seed gives the same losses."""

import numpy as np
import pytest
import torch

from envs import language, network, teacher_student
from envs.base import Scripted
from trainers.sb3 import train

G = torch.Generator().manual_seed(0)
IMAGES, LABELS = torch.rand(96, 64, generator=G), torch.arange(96) % 10


def make_language():
    return language.parallel_env(images=IMAGES, message_length=4, batch_size=2, max_steps=8)


def make_network():
    return network.parallel_env(IMAGES, LABELS, IMAGES[:16], LABELS[:16], shape=(1, 8, 8), nodes=3, batch_size=4,
                                max_steps=8, reward_samples=16)  # fmt: skip


def make_teacher_student():
    logits = 3 * torch.nn.functional.one_hot(LABELS, 10).float()
    env = teacher_student.parallel_env(IMAGES, LABELS, logits, IMAGES[:16], LABELS[:16], stack_size=2, batch_size=4,
                                       hidden=(8,), reward_samples=16, max_steps=8)  # fmt: skip
    return Scripted(env, {"student": lambda obs: 1})


ENVS = {"language": make_language, "network": make_network, "teacher_student": make_teacher_student}


@pytest.mark.parametrize("name", list(ENVS))
def test_ppo_runs_on_each_env_and_the_same_seed_gives_the_same_first_losses(name, tmp_path):
    def run(seed):
        _, rows = train(ENVS[name](), "ppo", timesteps=32, seed=seed, logdir=tmp_path / f"s{seed}-{len(rows_seen)}",
                        n_steps=16, batch_size=16, n_epochs=1)  # fmt: skip
        rows_seen.append(rows)
        return [r for r in rows if "train/loss" in r]

    rows_seen: list = []
    first, again, other = run(0), run(0), run(1)
    assert first and first[0]["train/loss"] == again[0]["train/loss"]
    assert [r["train/loss"] for r in first] == [r["train/loss"] for r in again]
    assert first[0]["train/loss"] != other[0]["train/loss"]
    assert list((tmp_path / "s0-0").glob("events.out.tfevents.*"))


def test_scripted_agents_act_by_their_policy_and_are_hidden():
    env = make_teacher_student()
    assert env.possible_agents == ["teacher"]
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"teacher"}
    before = env.env._val_loss()
    _, rewards, *_ = env.step({"teacher": np.ones(2 * 4 + 1, dtype=np.float32)})
    assert set(rewards) == {"teacher"} and rewards["teacher"] == pytest.approx(before - env.env._val_loss(), abs=1e-6)
    assert rewards["teacher"] != 0  # the scripted student took the update
    with pytest.raises(ValueError, match="no agent"):
        Scripted(make_network(), {"node_9": lambda obs: 0})


@pytest.mark.parametrize("name", ["network", "language", "teacher_student"])
def test_sb3_cli_trains_saves_and_logs(name, tmp_path, capsys):
    import json

    from benchmarks import sb3 as bench
    from tests.conftest import exit_code, make_dataset

    root = make_dataset(tmp_path / "data", name="fashion-mnist" if name == "network" else "mnist", n_train=300)
    out, save = tmp_path / "rows.json", tmp_path / "model.zip"
    argv = ["--env", name, "--data-dir", str(root), "--timesteps", "16", "--n-steps", "8", "--episode-steps", "4",
            "--batch-size", "8",
            "--logdir", str(tmp_path / "runs"), "--out", str(out), "--save", str(save), "--quick-teacher",
            "--teacher-cache", str(tmp_path / "teachers")]  # fmt: skip
    assert exit_code(bench.main, argv) == 0
    data = json.loads(out.read_text())
    assert data["env"] == name and data["timesteps"] >= 16 and any("train/loss" in r for r in data["rows"])
    assert save.stat().st_size > 0 and list((tmp_path / "runs" / "sb3" / name / "ppo-seed0").glob("events.*"))
    captured = capsys.readouterr()
    assert "PPO on " + name in captured.out
    if name == "teacher_student":  # the teacher trains first, with a progress bar, not in silence
        assert "teacher (seed 0, trained once, cached in" in captured.err


def test_sb3_cli_sweeps_a_flag_with_a_file_and_run_per_value(tmp_path, capsys):
    import json

    from benchmarks import sb3 as bench
    from tests.conftest import exit_code, make_dataset

    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300)
    out = tmp_path / "rows.json"
    argv = ["--env", "network", "--data-dir", str(root), "--timesteps", "16", "--n-steps", "8", "--episode-steps",
            "4", "--batch-size", "8", "--algo", "a2c", "--logdir", str(tmp_path / "runs"), "--out", str(out),
            "--save", str(tmp_path / "m.zip"), "--sweep", "seed=0,1"]  # fmt: skip
    assert exit_code(bench.main, argv) == 0
    first, second = (json.loads((tmp_path / f"rows-seed={k}.json").read_text()) for k in (0, 1))
    assert (first["seed"], second["seed"]) == (0, 1) and first["variant"] == "seed=0"
    assert any("time/total_timesteps" in r for r in first["rows"])  # A2C's rows reach the table
    assert (tmp_path / "m-seed=1.zip").stat().st_size > 0
    assert list((tmp_path / "runs" / "sb3" / "network" / "seed=1" / "a2c-seed1").glob("events.*"))
    printed = capsys.readouterr().out
    assert "Sweep over seed" in printed and "A2C on network" in printed


def test_sb3_cli_bad_input_is_one_line(tmp_path, capsys):
    from benchmarks import sb3 as bench
    from tests.conftest import exit_code

    assert exit_code(bench.main, ["--env", "network", "--timesteps", "0"]) == 2
    assert "--timesteps" in capsys.readouterr().err
    assert exit_code(bench.main, ["--env", "network", "--seed", "-1"]) == 2
    assert "--seed must be in [0, 2**32 - 1]" in capsys.readouterr().err
    assert exit_code(bench.main, ["--env", "chess"]) == 2


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_off_policy_algorithms_train_the_teachers_box_action_reproducibly(algo, tmp_path):
    def run(seed):
        _, rows = train(make_teacher_student(), algo, timesteps=24, seed=seed, learning_starts=8, batch_size=8,
                        buffer_size=24)  # fmt: skip
        return [r["train/critic_loss"] for r in rows if "train/critic_loss" in r]

    first, again, other = run(0), run(0), run(1)
    assert first and first == again and first != other


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_off_policy_algorithms_refuse_discrete_actions_in_one_line(algo):
    with pytest.raises(ValueError) as error:
        train(make_network(), algo, timesteps=8)
    assert str(error.value) == (
        f"{algo.upper()} needs a Box action space; this env's actions are MultiDiscrete: use ppo or a2c"
    )


def test_sb3_cli_sac_on_the_teacher_and_td3_refused_on_the_network(tmp_path, capsys):
    import json

    from benchmarks import sb3 as bench
    from tests.conftest import exit_code, make_dataset

    root = make_dataset(tmp_path / "data", n_train=300)
    out = tmp_path / "rows.json"
    argv = ["--env", "teacher_student", "--data-dir", str(root), "--timesteps", "24", "--episode-steps", "4",
            "--batch-size", "8", "--learning-starts", "8", "--algo", "sac", "--logdir", str(tmp_path / "runs"),
            "--out", str(out), "--save", str(tmp_path / "m.zip"), "--quick-teacher",
            "--teacher-cache", str(tmp_path / "teachers")]  # fmt: skip
    assert exit_code(bench.main, argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert any("train/actor_loss" in r and "time/total_timesteps" in r for r in rows)
    printed = capsys.readouterr().out
    assert "SAC on teacher_student" in printed and "train/critic_loss" in printed
    argv = ["--env", "network", "--data-dir", str(make_dataset(tmp_path / "fm", name="fashion-mnist")), "--algo", "td3",
            "--out", str(tmp_path / "td3.json")]  # fmt: skip
    assert exit_code(bench.main, argv) == 2
    assert "--algo td3 on --env network: TD3 needs a Box action space" in capsys.readouterr().err
    assert not (tmp_path / "td3.json").exists()


def test_each_table_row_holds_its_rollout_and_the_update_that_followed():
    from trainers.sb3 import updates

    _, rows = train(make_network(), "a2c", timesteps=48, seed=0, n_steps=4)
    rollouts = [r for r in rows if "time/total_timesteps" in r]
    table = updates(rows, "a2c")
    assert "train/value_loss" not in rollouts[0]  # SB3 logs the first rollout before any update
    assert len(table) == len(rollouts) and all("train/value_loss" in r for r in table)
    assert table[-1]["train/value_loss"] == rows[-1]["train/value_loss"]  # the last update, from the final dump
    assert [r["time/total_timesteps"] for r in table] == [r["time/total_timesteps"] for r in rollouts]
