"""SB3 through SuperSuit on each of our envs: a short PPO run completes, and the same seed gives the same losses."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from benchmarks import sb3 as sb3_cli
from envs import language, network, teacher_student
from envs.base import Scripted
from tests.conftest import exit_code, make_dataset
from trainers.sb3 import train

G = torch.Generator().manual_seed(0)
IMAGES, LABELS = torch.rand(96, 64, generator=G), torch.arange(96) % 10


def make_language():
    return language.parallel_env(images=IMAGES, message_length=4, batch_size=2, max_steps=8)


def make_network():
    return network.parallel_env(IMAGES, LABELS, IMAGES[:16], LABELS[:16], shape=(1, 8, 8), nodes=3, batch_size=4,
                                max_steps=8, reward_samples=16)


def make_teacher_student():
    logits = 3 * torch.nn.functional.one_hot(LABELS, 10).float()
    env = teacher_student.parallel_env(IMAGES, LABELS, logits, IMAGES[:16], LABELS[:16], stack_size=2, batch_size=4,
                                       hidden=(8,), reward_samples=16, max_steps=8)
    return Scripted(env, {"student": lambda obs: 1})


ENVS = {"language": make_language, "network": make_network, "teacher_student": make_teacher_student}


@pytest.mark.parametrize("name", list(ENVS))
def test_ppo_runs_on_each_env_and_the_same_seed_gives_the_same_first_losses(name, tmp_path):
    def run(seed):
        _, rows = train(ENVS[name](), "ppo", timesteps=32, seed=seed, logdir=tmp_path / f"s{seed}-{len(rows_seen)}",
                        n_steps=16, batch_size=16, n_epochs=1)
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
    root = make_dataset(tmp_path / "data", name="fashion-mnist" if name == "network" else "mnist", n_train=300)
    out, save = tmp_path / "rows.json", tmp_path / "models"
    argv = ["--env", name, "--data-dir", str(root), "--timesteps", "16", "--n-steps", "8", "--episode-steps", "4",
            "--batch-size", "8", "--logdir", str(tmp_path / "runs"), "--out", str(out), "--save", str(save),
            *(["--quick-teacher", "--teacher-cache", str(tmp_path / "teachers")] if name == "teacher_student" else [])]
    assert exit_code(sb3_cli.main, argv) == 0
    data = json.loads(out.read_text())
    run = data["cells"]["ppo"]["runs"]["0"]
    assert data["benchmark"] == "sb3" and data["config"]["env"] == name and run["timesteps"] >= 16
    assert any("train/loss" in r for r in run["rows"])
    assert (save / "ppo" / "seed0.zip").stat().st_size > 0
    assert list((tmp_path / "runs" / "rows" / "ppo" / "seed0").glob("events.*"))
    captured = capsys.readouterr()
    assert "PPO on " + name in captured.out
    if name == "teacher_student":  # the teacher trains first, with a progress bar, not in silence
        assert "teacher (seed 0, trained once, cached in" in captured.err


def test_sb3_cli_sweeps_a_flag_with_a_cell_and_run_per_value_and_never_retrains(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300)
    out = tmp_path / "rows.json"
    argv = ["--env", "network", "--data-dir", str(root), "--timesteps", "16", "--episode-steps", "4", "--algo",
            "a2c", "--logdir", str(tmp_path / "runs"), "--out", str(out), "--save", str(tmp_path / "m"), "--sweep",
            "n-steps=4,8", "--seeds", "0,1"]
    assert exit_code(sb3_cli.main, argv) == 0
    cells = json.loads(out.read_text())["cells"]
    assert set(cells) == {"n-steps=4/a2c", "n-steps=8/a2c"} and set(cells["n-steps=8/a2c"]["runs"]) == {"0", "1"}
    assert any("time/total_timesteps" in r for r in cells["n-steps=4/a2c"]["runs"]["1"]["rows"])  # A2C's rows
    assert (tmp_path / "m" / "n-steps=8" / "a2c" / "seed1.zip").stat().st_size > 0
    assert list((tmp_path / "runs" / "rows" / "n-steps=8" / "a2c" / "seed1").glob("events.*"))
    printed = capsys.readouterr().out
    assert "A2C on network" in printed and "n-steps=8" in printed
    before = out.read_text()
    assert exit_code(sb3_cli.main, argv) == 0  # every run is finished: nothing trains again, its tables print
    again = capsys.readouterr().out
    assert "trained 0 runs, read 4 finished runs" in again and "A2C on network" in again
    assert json.loads(out.read_text())["cells"] == json.loads(before)["cells"]


@pytest.mark.parametrize(("argv", "said"), [
    (["--timesteps", "0"], "--timesteps must be >= 1, got 0"),
    (["--seeds", "4294967296-4294967297"], "--seeds must be below 2**32"),
    (["--env", "language", "--nodes", "3"], "--nodes does nothing with --env language; it is read with --env network"),
    (["--learning-starts", "5"], "--learning-starts does nothing with --algo ppo; it is read with --algo sac|td3"),
    (["--algo", "a2c", "--batch-size", "8"], "--batch-size does nothing with --algo a2c"),
    (["--batch-size", "7", "--n-steps", "8"], "--batch-size 7 must divide --n-steps x agents = 8 x 4"),
    (["--quick-teacher"], "--quick-teacher does nothing with --env network"),
    (["--algo", "td3"], "--algo td3 on --env network: TD3 needs a Box action space"),
    (["--quick-teache"], "--quick-teache is not a flag (did you mean --quick-teacher?)"),
])
def test_sb3_cli_bad_input_is_one_line_before_anything_trains(argv, said, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert exit_code(sb3_cli.main, ["--env", "network", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not out.exists()


def test_sb3_cli_refuses_what_would_lose_results_before_training(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300)
    argv = ["--env", "network", "--data-dir", str(root), "--quick", "--timesteps", "16", "--logdir",
            str(tmp_path / "runs"), "--save", str(tmp_path / "m")]
    out = tmp_path / "rows.json"
    assert exit_code(sb3_cli.main, [*argv, "--out", str(out)]) == 0
    kept = out.read_text()
    assert exit_code(sb3_cli.main, [*argv, "--out", str(out), "--timesteps", "32"]) == 2
    assert "holds results of another configuration (differs in: timesteps)" in capsys.readouterr().err
    (tmp_path / "garbage.json").write_text("not json")
    assert exit_code(sb3_cli.main, [*argv, "--out", str(tmp_path / "garbage.json")]) == 2
    assert "is not a readable results file" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    for flag, path in (("--out", tmp_path / "file" / "rows.json"), ("--save", tmp_path / "file" / "m"),
                       ("--out", tmp_path)):
        assert exit_code(sb3_cli.main, [*argv, "--out", str(out), flag, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("cannot write to" in err or "not a readable results file" in err), err
    assert out.read_text() == kept


def test_two_sb3_runs_on_one_out_at_once_the_second_is_refused_and_the_first_keeps_its_results(tmp_path):
    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300)
    out = tmp_path / "rows.json"
    command = [sys.executable, "-m", "benchmarks.sb3", "--env", "network", "--data-dir", str(root), "--timesteps",
               "2048", "--n-steps", "32", "--batch-size", "32", "--logdir", str(tmp_path / "runs"), "--save",
               str(tmp_path / "m"), "--out", str(out)]
    first = subprocess.Popen([*command, "--seeds", "0-0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out.with_name(out.name + ".lock")
    while not lock.exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.02)
    second = subprocess.run([*command, "--seeds", "1-1"], capture_output=True, text=True)
    assert second.returncode == 2 and f"another process is writing {out}" in second.stderr
    assert first.wait(timeout=300) == 0
    assert set(json.loads(out.read_text())["cells"]["ppo"]["runs"]) == {"0"}


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_off_policy_algorithms_train_the_teachers_box_action_reproducibly(algo, tmp_path):
    def run(seed):
        _, rows = train(make_teacher_student(), algo, timesteps=24, seed=seed, learning_starts=8, batch_size=8,
                        buffer_size=24)
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


def test_sb3_cli_sac_on_the_teacher(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", n_train=300)
    out = tmp_path / "rows.json"
    argv = ["--env", "teacher_student", "--data-dir", str(root), "--timesteps", "24", "--episode-steps", "4",
            "--batch-size", "8", "--learning-starts", "8", "--algo", "sac", "--logdir", str(tmp_path / "runs"),
            "--out", str(out), "--save", str(tmp_path / "m"), "--quick-teacher",
            "--teacher-cache", str(tmp_path / "teachers")]
    assert exit_code(sb3_cli.main, argv) == 0
    rows = json.loads(out.read_text())["cells"]["sac"]["runs"]["0"]["rows"]
    assert any("train/actor_loss" in r and "time/total_timesteps" in r for r in rows)
    printed = capsys.readouterr().out
    assert "SAC on teacher_student" in printed and "train/critic_loss" in printed


def test_each_table_row_holds_its_rollout_and_the_update_that_followed():
    from trainers.sb3 import updates

    _, rows = train(make_network(), "a2c", timesteps=48, seed=0, n_steps=4)
    rollouts = [r for r in rows if "time/total_timesteps" in r]
    table = updates(rows, "a2c")
    assert "train/value_loss" not in rollouts[0]  # SB3 logs the first rollout before any update
    assert len(table) == len(rollouts) and all("train/value_loss" in r for r in table)
    assert table[-1]["train/value_loss"] == rows[-1]["train/value_loss"]  # the last update, from the final dump
    assert [r["time/total_timesteps"] for r in table] == [r["time/total_timesteps"] for r in rollouts]
