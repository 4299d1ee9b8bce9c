import json
import os

import pytest
import torch

import trainers.teacher_student.teachers as teacher_module
from benchmarks import teacher as bench
from benchmarks.protocol import held_target
from envs.data import load_splits
from tests.conftest import exit_code

SMALL = ["--batch-size", "4", "--teacher-batch-size", "10", "--teacher-patience", "1", "--max-epochs", "3",
         "--patience", "1", "--eval-every", "10"]


def run(argv):
    return exit_code(bench.main, argv)


@pytest.fixture
def cli(data_root, tmp_path):
    out, logdir = tmp_path / "teacher.json", tmp_path / "runs"
    argv = ["--data-dir", str(data_root), "--out", str(out), "--logdir", str(logdir),
            "--teacher-cache", str(tmp_path / "teachers"), *SMALL]
    return argv, out, logdir


def test_smoke_run_writes_table_json_tensorboard_and_figure(cli, capsys):
    argv, out, logdir = cli
    assert (
        run([*argv, "--stack-sizes", "2", "--measures", "cross_entropy", "--targets", "soft,true", "--seeds", "2"]) == 0
    )
    printed = capsys.readouterr().out
    assert "Table 3.1" in printed and "stack2-cross_entropy-soft" in printed and "96.9" in printed
    assert "thesis backward" in printed and "reached 96.4" in printed
    data = json.loads(out.read_text())
    assert data["benchmark"] == "teacher" and set(data["cells"]) == {
        "baseline", "stack2-cross_entropy-soft", "stack2-cross_entropy-true"}
    entry = data["cells"]["stack2-cross_entropy-soft"]
    assert len(entry["runs"]) == 2 and entry["thesis"] == {"accuracy": 96.9, "backward_passes": 25_000}
    for key in ("backward_passes", "compute", "backward_passes_thesis_target", "compute_thesis_target"):
        assert set(entry[key]) == {"0", "1"}
    base = data["cells"]["baseline"]
    assert all(base["backward_passes"][k] is not None for k in ("0", "1"))  # it holds its own target by construction
    run0 = entry["runs"]["0"]
    assert run0["counters"]["student_forward_passes"] == 3 * run0["stopped_step"]  # stack of 2 + training pass
    assert run0["counters"]["teacher_forward_passes"] == 2 * run0["stopped_step"]
    assert data["cells"]["baseline"]["runs"]["0"]["counters"]["teacher_forward_passes"] == 0
    assert entry["summary"]["test_accuracy"]["n"] == 2 and set(data["references"]["teacher_test_accuracy"]) == {
        "0", "1"}
    assert (logdir / "teacher" / "figure_3_1.png").stat().st_size > 1000
    assert list((logdir / "teacher" / "baseline" / "seed1").glob("events.out.tfevents.*"))


def test_the_thesis_columns_stand_only_beside_the_thesis_student(cli, capsys):
    argv, _, _ = cli
    assert run([*argv, "--hidden", "8", "--stack-sizes", "2", "--measures", "random", "--targets", "true",
                "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "stack2-random-true" in printed and "backward to target" in printed
    assert "thesis backward" not in printed and "at the thesis'" not in printed
    # one candidate per rule: nothing is chosen, so nothing is marked and the footer does not explain a mark
    assert " *" not in printed and "* = the rule's parameters" not in printed


def test_rerun_skips_finished_runs_and_reuses_cached_teachers(cli, monkeypatch):
    argv, out, _ = cli
    assert run([*argv, "--stack-sizes", "2", "--measures", "random", "--targets", "soft", "--seeds", "1"]) == 0
    before = json.loads(out.read_text())["cells"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(bench, "StudentTrainer", no_training)
    monkeypatch.setattr(teacher_module, "StudentTrainer", no_training)
    assert run([*argv, "--stack-sizes", "2", "--measures", "random", "--targets", "soft", "--seeds", "1"]) == 0
    assert {k: v["runs"] for k, v in json.loads(out.read_text())["cells"].items()} == {
        k: v["runs"] for k, v in before.items()}


BAD_INPUTS = [
    (["--stack-sizes", "0"], "--stack-sizes must be >= 1"),
    (["--measures", "kl"], "unknown measure(s) kl"),
    (["--targets", "labels"], "unknown target(s) labels"),
    (["--batch-size", "1000"], "does not fit in the 90 training images"),  # 100, less the holdout's tenth
    (["--seeds", "0"], "a count of seeds must be >= 1, got '0' (seed 0 alone is the range 0-0)"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["--holdout", "100"], "--holdout: a holdout of 100 images must leave training images"),
    (["--seeds", "2", "--tuning-seeds", "0,1"], "--tuning-seeds 0,1 must be some, not all, of --seeds 0,1"),
    (["--seeds", "2", "--tuning-seeds", "5"], "must be some, not all, of --seeds"),
    (["--lr-schedule", "step"], "unknown learning-rate schedule(s) step"),
    (["--target-accuracy", "150"], "percentage in (0, 100]"),
    (["--pressures", "0.5"], "--pressures must be >= 1 (or inf)"),
    (["--pressures", "ten"], "--pressures must be comma-separated numbers"),
    (["--floors", "1"], "--floors must be in [0, 1)"),
    (["--anneal", "2.5"], "--anneal must be whole numbers >= 0"),
    (["--measures", "random", "--pressures", "30"], "random with --pressures inf"),
    (["--measures", "random", "--refresh", "100"], "--refresh go with --measures own_loss"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(cli, capsys, extra, message):
    argv, out, _ = cli
    assert run([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.skipif(not os.environ.get("COMMCHANNELS_DATA"), reason="real MNIST needs COMMCHANNELS_DATA")
def test_quick_teacher_benchmark_on_real_mnist(tmp_path, capsys):
    out = tmp_path / "quick.json"
    argv = ["--quick", "--out", str(out), "--logdir", str(tmp_path / "runs"), "--teacher-cache", str(tmp_path / "t")]
    assert run(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["cells"]) == {c.name for c in [*bench.THESIS, *bench.BEYOND]} | {"baseline-cosine"}
    assert len(data["cells"]) == 17
    assert all(e["runs"]["0"]["test_accuracy"] > 85 for e in data["cells"].values())  # two epochs of 784-32-32-10
    assert "Table 3.1" in capsys.readouterr().out


def test_a_killed_benchmark_keeps_the_students_that_had_finished(cli, monkeypatch):
    argv, out, _ = cli
    grid = [*argv, "--stack-sizes", "2", "--measures", "cross_entropy", "--targets", "soft", "--seeds", "2"]
    assert run([*grid, "--out", str(out.with_name("whole.json"))]) == 0
    whole = json.loads(out.with_name("whole.json").read_text())["cells"]
    real_finished = bench.Sink.finished
    finished = []

    def finish_then_die(self, run, result, weights):
        finished.append(run)
        if len(finished) == 2:  # the second student to finish; the first one was saved
            raise KeyboardInterrupt
        real_finished(self, run, result, weights)

    monkeypatch.setattr(bench.Sink, "finished", finish_then_die)
    assert run(grid) == 130
    saved = json.loads(out.read_text())["cells"]
    assert sum(len(e["runs"]) for e in saved.values()) == 1
    monkeypatch.setattr(bench.Sink, "finished", real_finished)
    assert run(grid) == 0  # resumes the interrupted batch from its checkpoint
    saved = json.loads(out.read_text())["cells"]
    assert sum(len(e["runs"]) for e in saved.values()) == 4
    for cell, entry in whole.items():
        for k, r in entry["runs"].items():
            assert saved[cell]["runs"][k]["val_accuracy"] == r["val_accuracy"]


def test_learned_policies_are_compared_with_the_heuristic_and_random(cli, capsys):
    argv, out, _ = cli
    policies = ["--policies", "reinforce,ppo", "--policy-episodes", "1", "--policy-steps", "10",
                "--policy-stack-size", "2", "--policy-reward-samples", "10", "--seeds", "1"]
    assert run([*argv, *policies]) == 0
    data = json.loads(out.read_text())
    assert set(data["cells"]) == {"baseline", "stack2-cross_entropy-true", "stack2-random-true",
                                  "stack2-cross_entropy-true-rank300-floor0.3", "stack2-reducible-true",
                                  "stack2-learned_reinforce_advantage_s0-true",
                                  "stack2-learned_ppo_advantage_s0-true"}
    assert data["config"]["policy_steps"] == 10 and set(data["references"]["policy_training_s"]) == {
        "reinforce_advantage_s0", "ppo_advantage_s0"}
    run0 = data["cells"]["stack2-learned_ppo_advantage_s0-true"]["runs"]["0"]
    assert run0["counters"]["student_forward_passes"] == 3 * run0["stopped_step"]  # reads the student's stack
    assert "stack2-learned_reinforce_advantage_s0-true" in capsys.readouterr().out
    assert run([*argv, *policies, "--policies", "dance"]) == 2


def test_the_policy_seed_and_reward_reach_the_learned_teachers_training(cli, monkeypatch):
    argv, out, _ = cli
    seen = []

    def record(splits, logits, config, seed, progress=None):
        seen.append((seed, config.reward, config.horizon))
        reward_images.append(splits.val.images)
        return lambda observed: observed[..., -3]  # scores by cross-entropy

    reward_images = []

    monkeypatch.setattr(bench, "train_reinforce", record)
    flags = ["--policies", "reinforce", "--policy-stack-size", "2", "--seeds", "1", "--policy-seeds", "3,5",
             "--policy-reward-samples", "10"]
    assert run([*argv, *flags, "--policy-rewards", "drop", "--policy-horizon", "4"]) == 0
    assert seen == [(3, "drop", 4), (5, "drop", 4)]  # one candidate policy per seed
    assert {"stack2-learned_reinforce_drop_s3-true", "stack2-learned_reinforce_drop_s5-true"} <= set(
        json.loads(out.read_text())["cells"])
    # the reward reads the holdout carved from the training split (its last tenth), not the validation images
    train = load_splits("mnist", argv[1], download=False).train
    assert torch.equal(reward_images[0], train.images[90:])
    assert run([*argv, *flags, "--policy-rewards", "accuracy"]) == 2
    assert run([*argv, *flags, "--holdout", "5", "--policy-reward-samples", "8"]) == 2


def test_a_sweep_trains_each_value_with_its_own_cells_and_figure(cli, capsys):
    argv, out, logdir = cli
    grid = [*argv, "--stack-sizes", "2", "--measures", "random", "--targets", "true", "--seeds", "1",
            "--teacher-hidden", "16", "--sweep", "lr=0.001,0.01"]
    assert run(grid) == 0
    printed = capsys.readouterr().out
    assert "Table 3.1, lr=0.001" in printed and "Table 3.1, lr=0.01" in printed and "Sweep over lr" in printed
    data = json.loads(out.read_text())
    assert set(data["cells"]) == {f"lr={v}/{c}" for v in ("0.001", "0.01") for c in ("baseline", "stack2-random-true")}
    assert data["config"]["sweep"] == "lr" and "lr" not in data["config"] and data["config"]["teacher_hidden"] == [16]
    base = data["cells"]["lr=0.01/baseline"]
    assert base["target_accuracy"] == held_target([r["val_accuracy"] for r in base["runs"].values()])
    assert (logdir / "teacher" / "sweep_lr.png").stat().st_size > 1000
    assert (logdir / "teacher" / "lr=0.01" / "figure_3_1.png").exists()
    assert list((logdir / "teacher" / "lr=0.001" / "baseline" / "seed0").glob("events.out.tfevents.*"))
    assert "(the highest the baseline holds on every seed)" in printed
    # a target given by flag is read off the same runs, and the tables say where it came from
    assert run([*grid, "--target-accuracy", "12.5"]) == 0
    printed = capsys.readouterr().out
    assert "at the target, 12.50% (set by --target-accuracy)" in printed
    assert "speedup by per-run compute to the target set by --target-accuracy" in printed
    assert json.loads(out.read_text())["cells"]["lr=0.01/baseline"]["target_accuracy"] == 12.5


def test_sampled_rules_are_crossed_with_pressures_schedules_and_floors_and_one_is_chosen_on_validation(cli, capsys):
    argv, out, _ = cli
    grid = [*argv, "--stack-sizes", "3", "--measures", "cross_entropy,reducible_holdout,random", "--targets", "true",
            "--pressures", "10,100,inf", "--anneal", "0,30", "--floors", "0,0.2", "--seeds", "1"]
    assert run(grid) == 0
    data = json.loads(out.read_text())
    sampled = {f"rank{p}{a}{f}" for p in (10, 100) for a in ("", "-anneal30") for f in ("", "-floor0.2")}
    expected = {"baseline", *(f"stack3-{m}-true{s}" for m in ("cross_entropy", "reducible_holdout")
                              for s in ("", *(f"-{x}" for x in sampled))), "stack3-random-true"}
    assert set(data["cells"]) == expected  # no annealing or floor with the hardest (inf), random once
    printed = capsys.readouterr().out
    marked = [line.split()[0] for line in printed.splitlines() if line.startswith("stack") and " * " in line]
    assert len(marked) == 2 and {m.split("-")[1] for m in marked} == {"cross_entropy", "reducible_holdout"}
    assert "* = the rule's parameters chosen on validation on the same seeds" in printed
    entry = data["cells"]["stack3-reducible_holdout-true-rank10-anneal30"]
    assert len(entry["backward_passes_tuning"]) == 1 and len(entry["backward_passes_thesis_target"]) == 1
    run0 = entry["runs"]["0"]
    assert run0["counters"]["teacher_forward_passes"] == 0  # the irreducible losses are looked up, not the teacher
    assert run0["counters"]["student_forward_passes"] == 4 * run0["stopped_step"]
    assert list((out.parent / "teachers").glob("irreducible-*-seed0.pt"))
    (held_out,) = data["references"]["irreducible_test_accuracy"].values()  # beside the table: how good its model is
    assert 0 < held_out <= 100 and f"irreducible-loss models' test accuracy: seed 0: {held_out:.2f}%" in printed
    # a file written before the accuracy was recorded gets it from the cached model when next read, training nothing
    del data["references"]["irreducible_test_accuracy"]
    out.write_text(json.dumps(data))
    assert run(grid) == 0 and "trained 0 runs" in capsys.readouterr().out
    assert json.loads(out.read_text())["references"]["irreducible_test_accuracy"] == {"0": held_out}
    assert list((out.parent / "teachers").glob("teacher-*-seed0.json"))  # the teacher's training cost
    assert "one-off: the teacher's training" in printed
    assert (out.parent / "runs" / "teacher" / "speedup_vs_pressure.png").stat().st_size > 1000
