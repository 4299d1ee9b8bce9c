"""Cells and seeds on a cluster engine (``--launcher submitit|ray``): the same numbers as here, resume after a
killed driver or worker, and one-line errors. Ray and submitit run locally (submitit's local executor)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import language as bench
from tests.conftest import exit_code
from tests.test_language_cli import SMALL

SWEEP = [*SMALL, "--seeds", "2", "--levels", "none,both", "--sweep", "ce-weight=0.01,0.1", "--no-analysis"]
PROVENANCE = ("task", "weights")  # where a run trained and where its weights went: the rest must be equal


def _argv(data_root, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_root), "--out", str(out), "--logdir", str(out.parent / "runs"), *SWEEP, *extra]


def _runs(out: Path) -> dict:
    cells = json.loads(out.read_text())["cells"]
    return {(c, k): {key: v for key, v in run.items() if key not in PROVENANCE}
            for c, cell in cells.items() for k, run in cell["runs"].items()}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from tests.conftest import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("local") / "local.json"
    assert exit_code(bench.main, _argv(root, out)) == 0
    return root, _runs(out)


@pytest.mark.parametrize("launcher", ["submitit", "ray"])
def test_a_sweep_on_an_engine_gives_the_local_numbers(local, tmp_path, launcher):
    root, expected = local
    out = tmp_path / f"{launcher}.json"
    assert exit_code(bench.main, _argv(root, out, "--launcher", launcher, "--runs-per-task", "2",
                                       "--max-tasks", "2")) == 0
    assert _runs(out) == expected and len(expected) == 8
    cells = json.loads(out.read_text())["cells"]
    tasks = {run["task"]["key"] for cell in cells.values() for run in cell["runs"].values()}
    assert len(tasks) == 4 and all(run["task"]["launcher"] == launcher for cell in cells.values()
                                   for run in cell["runs"].values())
    assert not list((tmp_path / f"{launcher}.json.tasks").glob("*.result.pt"))  # every result taken in


def test_a_killed_driver_loses_nothing_and_trains_nothing_twice(local, tmp_path):
    root, expected = local
    out = tmp_path / "killed.json"
    one_at_a_time = ("--launcher", "ray", "--runs-per-task", "1", "--cpus-per-task", str(os.cpu_count()))
    argv = [sys.executable, "-m", "benchmarks.language", *_argv(root, out, *one_at_a_time)]
    driver = subprocess.Popen(argv, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and len(_runs(out)) >= 2):
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    cells = json.loads(out.read_text())["cells"]
    finished = {run["task"]["key"] for cell in cells.values() for run in cell["runs"].values()}
    assert 2 <= len(_runs(out)) < 8  # killed with some runs taken in and some not
    log = tmp_path / "killed.json.tasks" / "trained.log"
    started = len(log.read_text().splitlines())
    assert exit_code(bench.main, _argv(root, out, *one_at_a_time)) == 0
    assert _runs(out) == expected  # complete, and equal to the uninterrupted run
    again = {line.split()[0] for line in log.read_text().splitlines()[started:]}
    assert again and not again & finished  # the re-run trained only what was missing


def test_a_worker_killed_mid_run_is_retried_with_the_same_numbers(local, tmp_path):
    root, _ = local
    marker = tmp_path / "killed-once"
    agent = tmp_path / "dying.py"
    agent.write_text(
        "import os\n"
        "from agents.speakers import MLPSpeaker\n\n\n"
        "class Dying(MLPSpeaker):\n"
        "    calls = 0\n\n"
        "    def forward(self, *args, **kwargs):\n"
        "        Dying.calls += 1\n"
        f"        if Dying.calls > 40 and os.getpid() != {os.getpid()} and not os.path.exists({str(marker)!r}):\n"
        f"            open({str(marker)!r}, 'w').close()\n"
        "            os._exit(1)  # a worker process (not this one) dies mid-run, once\n"
        "        return super().forward(*args, **kwargs)\n")
    plain, retried = tmp_path / "plain.json", tmp_path / "retried.json"
    assert exit_code(bench.main, _argv(root, plain, "--agent", f"{agent}:Dying")) == 0  # here: it never dies
    assert exit_code(bench.main, _argv(root, retried, "--agent", f"{agent}:Dying", "--launcher", "ray")) == 0
    assert marker.exists() and _runs(retried) == _runs(plain)


def test_missing_extras_unreachable_ray_and_unknown_partitions_are_one_line(local, tmp_path, capsys, monkeypatch):
    root, _ = local
    out = tmp_path / "bad.json"
    assert exit_code(bench.main, _argv(root, out, "--launcher", "ray", "--ray-address", "127.0.0.1:1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray-address 127.0.0.1:1: cannot reach it" in err
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("sbatch", "exit 1"), ("sinfo", "echo 'cpu* gpu'")):
        (bin_ / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    assert exit_code(bench.main, _argv(root, out, "--launcher", "submitit", "--slurm-partition", "nope")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--slurm-partition nope is not a partition" in err and "cpu, gpu" in err
    monkeypatch.setitem(sys.modules, "submitit", None)
    from benchmarks import launch

    launch._extra.cache_clear()
    assert exit_code(bench.main, _argv(root, out, "--launcher", "submitit")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith('needs submitit, which is not installed; pip install -e ".[cluster]"')
    launch._extra.cache_clear()
    assert not out.exists() or not _runs(out)  # nothing trained, nothing lost


def test_the_teacher_benchmark_on_an_engine_gives_the_local_numbers(local, tmp_path):
    """The driver trains the teachers, the irreducible-loss models and the learned teachers once; tasks load them."""
    from benchmarks import teacher
    from tests.test_teacher_cli import SMALL as TEACHER

    root, _ = local
    cache = tmp_path / "teachers"
    argv = lambda out, *extra: ["--data-dir", str(root), "--out", str(tmp_path / out), "--logdir",  # noqa: E731
                                str(tmp_path / "runs"), "--teacher-cache", str(cache), *TEACHER, "--seeds", "2",
                                "--holdout", "20", "--policies", "reinforce", "--policy-episodes", "1",
                                "--policy-steps", "4", "--policy-reward-samples", "10", "--policy-warmup", "0", *extra]
    assert exit_code(teacher.main, argv("here.json")) == 0
    assert exit_code(teacher.main, argv("ray.json", "--launcher", "ray", "--runs-per-task", "3")) == 0
    here, there = _runs(tmp_path / "here.json"), _runs(tmp_path / "ray.json")
    assert there == here and any("learned_reinforce" in cell for cell, _ in here)
    assert (tmp_path / "ray.json.tasks" / "policies" / "runs" / "reinforce_advantage_s0.pt").is_file()


def test_the_network_benchmark_on_an_engine_gives_the_local_numbers(tmp_path, capsys):
    """A cell's seeds per task, as one trainer here batches them; torchrun's modes stay on torchrun."""
    from benchmarks import network
    from tests.conftest import make_dataset
    from tests.test_network_cli import SMALL as NETWORK

    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300, n_test=40)
    argv = lambda out, *extra: ["--dataset", "fashion-mnist", "--data-dir", str(root), "--out",  # noqa: E731
                                str(tmp_path / out), "--logdir", str(tmp_path / "runs"), *NETWORK, "--seeds", "2",
                                "--nodes", "1,3", "--content", "labels", *extra]
    assert exit_code(network.main, argv("here.json")) == 0
    assert exit_code(network.main, argv("ray.json", "--launcher", "ray")) == 0
    assert _runs(tmp_path / "ray.json") == _runs(tmp_path / "here.json")
    capsys.readouterr()
    assert exit_code(network.main, argv("ddp.json", "--launcher", "ray", "--baseline", "ddp")) == 2
    assert "--baseline ddp run their processes under torchrun" in capsys.readouterr().err


def test_at_most_max_tasks_are_in_flight():
    from benchmarks.launch import Task, _in_flight

    tasks = [Task(f"t{i}", (("c", i),), print) for i in range(5)]
    flying, most = [], []

    def submit(task):
        flying.append(task.key)
        most.append(len(flying))
        return task.key

    def first(running):
        flying.remove(running[-1])  # the newest ends first: the order results come back in is the engine's
        return running[-1]

    assert list(_in_flight(tasks, 2, submit, first, lambda key: f"{key}.result.pt")) == [
        "t1.result.pt", "t2.result.pt", "t3.result.pt", "t4.result.pt", "t0.result.pt"]
    assert max(most) == 2


def test_tasks_probe_and_analyse_their_own_runs_as_here(local, tmp_path):
    root, _ = local
    here, there = tmp_path / "here.json", tmp_path / "there.json"
    with_analysis = [a for a in _argv(root, here) if a != "--no-analysis"]
    assert exit_code(bench.main, with_analysis) == 0
    assert exit_code(bench.main, [*[a if a != str(here) else str(there) for a in with_analysis],
                                  "--launcher", "ray"]) == 0
    mine, theirs = (json.loads(p.read_text()) for p in (here, there))
    assert _runs(there) == _runs(here) and all("analysis" in r for r in _runs(there).values())
    assert theirs["references"] == mine["references"]



def test_a_task_that_cannot_see_the_drivers_files_says_so(tmp_path):
    from benchmarks.launch import Task, UnsharedError, execute

    task = Task("t", (("c", 0),), print)
    with pytest.raises(UnsharedError, match=r"cannot see .*missing: --out, --logdir and the caches must be on a "):
        execute(task, str(tmp_path / "missing"), 1)


def test_the_driver_turns_an_engine_wrapped_unshared_error_into_one_line(tmp_path, monkeypatch):
    import argparse

    from benchmarks import launch as launcher
    from benchmarks.cli import UsageError
    from benchmarks.store import Store

    def wrapped(tasks, folder, args):
        raise RuntimeError("ray::execute() (pid=1)\n  File ...\nbenchmarks.launch.UnsharedError: a task on node7 "
                           "cannot see /scratch/x.json.tasks: --out, --logdir and the caches must be on a filesystem "
                           "the driver and every task share")
        yield

    monkeypatch.setattr(launcher, "_ray", wrapped)
    with Store(tmp_path / "x.json", "language", {}) as store:
        task = launcher.Task("t", (("c", 0),), print)
        with pytest.raises(UsageError) as e:
            launcher.launch(store, [task], argparse.Namespace(launcher="ray"))
    assert str(e.value).startswith("a task on node7 cannot see /scratch/x.json.tasks") and "\n" not in str(e.value)
