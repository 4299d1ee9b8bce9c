import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import language as bench
from tests.conftest import exit_code
from trainers.base import resolve_device

SMALL = ["--steps", "6", "--eval-every", "3", "--reference-epochs", "1", "--hidden", "16", "--critic-hidden", "16",
         "--message-length", "4", "--batch-size", "8"]


def run(argv):
    return exit_code(bench.main, argv)


@pytest.fixture
def cli(data_root, tmp_path):
    out, logdir = tmp_path / "results" / "language.json", tmp_path / "runs"
    return ["--data-dir", str(data_root), "--out", str(out), "--logdir", str(logdir), *SMALL], out, logdir


def test_smoke_run_writes_table_json_tensorboard_and_png(cli, capsys):
    argv, out, logdir = cli
    assert run([*argv, "--seeds", "2", "--levels", "none,both"]) == 0
    printed = capsys.readouterr().out
    assert "64.4" in printed and "71.4" in printed and "ref: probe on the raw view" in printed
    assert "upper: probe on the full clean image" in printed and "upper: both agents' untrained features" in printed
    assert "invertible map of the image" in printed  # why the thesis' view cannot show talking help
    data = json.loads(out.read_text())
    assert data["benchmark"] == "language" and data["config"]["noise"] == 0.1
    for level in ("none", "both"):
        entry = data["cells"][level]
        accuracies = [entry["runs"][k]["test_accuracy"] for k in ("0", "1")]
        assert entry["summary"]["test_accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
        assert entry["summary"]["test_accuracy"]["n"] == 2
        assert entry["runs"]["1"]["device"] == str(resolve_device("auto"))  # recorded with every run
        weights = torch.load(out.parent / entry["runs"]["1"]["weights"], weights_only=True)
        assert weights["speaker_student.body.0.weight"].shape == (16, 64)  # one run's best speaker, tensors only
    assert set(data["references"]) == {"raw_view", "untrained_hidden", "full_image", "both_features"}
    assert set(data["references"]["raw_view"]) == {"0", "1"}
    paired = data["cells"]["both"]["summary"]["paired"]  # vs none and vs alone, mean and 95% interval
    gaps = [data["cells"]["both"]["runs"][k]["test_accuracy"] - data["cells"]["none"]["runs"][k]["test_accuracy"]
            for k in ("0", "1")]
    assert set(paired) == {"none", "alone"} and paired["none"]["mean"] == pytest.approx(sum(gaps) / 2)
    assert paired["none"]["n"] == 2 and paired["none"]["low"] <= paired["none"]["mean"] <= paired["none"]["high"]
    assert data["wall_time_s"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = logdir / "language" / "both" / "seed1"
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/mi_loss_student", "train/communication_ce_student", "train/temperature", "val/accuracy"} <= tags
    assert [e.step for e in events.Scalars("val/accuracy")] == [3, 6]
    assert (logdir / "language" / "val_accuracy.png").stat().st_size > 1000
    assert not list(out.parent.glob("*.ckpt.*")) and not list(out.parent.glob(".*")) and not list(
        out.parent.glob("*.lock"))


def test_rerun_skips_finished_runs_and_trains_only_new_ones(cli, monkeypatch):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    first = json.loads(out.read_text())
    trained = []
    real = bench.LanguageTrainer.fit

    def recording(self, *args, **kwargs):
        trained.append(list(self.runs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bench.LanguageTrainer, "fit", recording)
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    assert trained == []  # nothing left to do
    assert run([*argv, "--seeds", "1", "--levels", "none,receive"]) == 0
    assert trained == [[("receive", 0)]]
    data = json.loads(out.read_text())
    assert data["cells"]["none"]["runs"] == first["cells"]["none"]["runs"]


def test_results_of_another_config_are_never_overwritten(cli, capsys):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    before = out.read_text()
    capsys.readouterr()
    assert run([*argv, "--seeds", "1", "--levels", "none", "--noise", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "noise" in err and err.count("\n") == 1
    assert out.read_text() == before


def test_same_command_same_numbers(cli, tmp_path):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "both"]) == 0
    again = tmp_path / "again.json"
    assert run([*argv, "--seeds", "1", "--levels", "both", "--out", str(again)]) == 0
    a, b = json.loads(out.read_text()), json.loads(again.read_text())
    strip = lambda d: {c: {k: {**r, "weights": None} for k, r in e["runs"].items()} for c, e in d["cells"].items()}  # noqa: E731
    assert strip(a) == strip(b) and a["references"] == b["references"]


@pytest.mark.parametrize("agent", ["tests.test_speakers:TinySpeaker", "agents.speakers:GRUSpeaker"])
def test_agent_plugs_in_from_the_command_line(cli, agent):  # a test-only class, and one through the per-run loop
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "feedback", "--agent", agent]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["agent"] == agent
    assert 0 <= data["cells"]["feedback"]["runs"]["0"]["test_accuracy"] <= 100


def test_an_agent_plugs_in_from_a_file_path_and_a_broken_file_is_one_line(cli, tmp_path, capsys):
    argv, out, _ = cli
    (tmp_path / "my_agents.py").write_text("from agents.speakers import MLPSpeaker\n\n\nclass Mine(MLPSpeaker):\n"
                                           "    pass\n")
    assert run([*argv, "--seeds", "1", "--levels", "none", "--no-analysis", "--agent",
                f"{tmp_path / 'my_agents.py'}:Mine"]) == 0
    assert json.loads(out.read_text())["config"]["agent"].endswith("my_agents.py:Mine")
    (tmp_path / "broken.py").write_text("class Mine(:\n")
    (tmp_path / "raising.py").write_text("raise RuntimeError('no GPU here')\n")
    for spec, said in ((f"{tmp_path / 'broken.py'}:Mine", "broken.py:1 has a syntax error"),
                       (f"{tmp_path / 'raising.py'}:Mine", "raised RuntimeError: no GPU here"),
                       (f"{tmp_path / 'absent.py'}:Mine", "no file")):
        assert run([*argv, "--seeds", "1", "--agent", spec, "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err


BAD_INPUTS = [
    (["--noise", "1.5"], "noise must be a probability"),
    (["--levels", "foo"], "unknown level(s) foo"),
    (["--seeds", "0"], "a count of seeds must be >= 1"),
    (["--seeds", "3-1"], "expected a count (5), a range (100-104) or seeds (100,101)"),
    (["--reference-epochs", "0"], "--reference-epochs must be >= 1"),
    (["--agent", "nosuch:Thing"], "cannot import module 'nosuch'"),
    (["--agent", "json:NoSuchClass"], "has no class 'NoSuchClass'"),
    (["--agent", "json"], "package.module:ClassName"),
    (["--agent", "collections:OrderedDict"], "speaker OrderedDict must be a torch.nn.Module subclass"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--hidden", "a,b"], "--hidden: expected comma-separated integers"),
    (["--temperature-factor", "2"], "temperature"),
    (["--batch-size", "5000"], "exceeds the 100 training images"),
    (["--noise", "abc"], "expected a number"),
    (["--lr", "nan"], "expected a finite number"),
    (["--sweep", "noise=0.1,2"], "noise must be a probability"),
    (["--view", "occlude", "--visible", "0"], "visible must be a fraction of the pixels in (0, 1], got 0.0"),
    (["--view", "occlude", "--visible", "1.5"], "visible must be a fraction of the pixels in (0, 1], got 1.5"),
    (["--view", "occlude", "--overlap", "complementary", "--visible", "0.6"], "need visible <= 0.5"),
    (["--view", "blur"], "argument --view: invalid choice: 'blur'"),
    (["--sweep", "visibility=0.1,0.2"], "--sweep takes FLAG=v1,v2,... with FLAG one of"),
    (["--view", "occlude", "--sweep", "visible=0.1,0"], "visible must be a fraction"),
    (["--preset", "loud"], "argument --preset: invalid choice: 'loud'"),
    (["--view", "occlude", "--sweep", "noise=0.1,0.2"],
     "--noise does nothing with --view occlude; it is read with --view invert|resample"),
    (["--visible", "0.3"], "--visible does nothing with --view invert; it is read with --view occlude"),
    (["--view", "resample", "--overlap", "complementary"], "--overlap does nothing with --view resample"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(cli, capsys, extra, message):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    assert run(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "nowhere does not exist" in err and "COMMCHANNELS_DATA" in err and err.count("\n") == 1


@pytest.mark.skipif(not os.environ.get("COMMCHANNELS_DATA"), reason="real MNIST needs COMMCHANNELS_DATA")
def test_quick_main_job_on_real_mnist(tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert run(["--quick", "--noise", "0.1", "--out", str(out), "--logdir", str(tmp_path / "runs")]) == 0
    data = json.loads(out.read_text())
    assert set(data["cells"]) == {"none", "receive", "feedback", "both"}
    assert all(e["summary"]["test_accuracy"]["n"] == 1 for e in data["cells"].values())
    assert data["references"]["raw_view"]["0"] > 80  # a linear probe undoes a fixed inversion mask
    assert all(e["summary"]["test_accuracy"]["mean"] > 20 for e in data["cells"].values())  # chance is 10%
    assert "Table 4.1" in capsys.readouterr().out


def test_both_estimators_are_a_sweep_in_one_file(cli, capsys, monkeypatch):
    argv, out, logdir = cli
    assert run([*argv, "--seeds", "1", "--levels", "none,feedback", "--estimator", "reinforce"]) == 0
    first = json.loads(out.read_text())  # an explicit --out is used as given, whatever the estimator
    assert first["config"]["estimator"] == "reinforce" and set(first["cells"]) == {"none", "feedback"}
    both = out.with_name("both.json")
    capsys.readouterr()
    assert run([*argv, "--seeds", "1", "--levels", "none,feedback", "--estimator", "both", "--out", str(both)]) == 0
    printed = capsys.readouterr().out
    assert "Sweep over estimator" in printed and "estimator=gumbel" in printed and "estimator=reinforce" in printed
    data = json.loads(both.read_text())
    assert set(data["cells"]) == {f"estimator={e}/{lv}" for e in ("gumbel", "reinforce") for lv in ("none", "feedback")}
    assert data["config"]["sweep"] == "estimator" and "estimator" not in data["config"]
    assert data["cells"]["estimator=reinforce/feedback"]["runs"]["0"]["test_accuracy"] == first["cells"]["feedback"][
        "runs"]["0"]["test_accuracy"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "both" / "estimator=reinforce" / "feedback" / "seed0")).Reload()
    assert "train/message_entropy_teacher" in events.Tags()["scalars"]
    assert (logdir / "both" / "sweep_estimator.png").stat().st_size > 1000


def test_a_sweep_keeps_finished_values_when_more_are_added(cli, monkeypatch):
    argv, out, logdir = cli
    assert run([*argv, "--seeds", "1", "--levels", "none", "--sweep", "ce-weight=0.01,0.1"]) == 0
    trained = []
    real = bench.LanguageTrainer.fit

    def recording(self, *args, **kwargs):
        trained.append((self.config.ce_weight, list(self.runs)))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bench.LanguageTrainer, "fit", recording)
    assert run([*argv, "--seeds", "1", "--levels", "none", "--sweep", "ce-weight=0.01,0.1,0.5"]) == 0
    assert trained == [(0.5, [("none", 0)])]
    data = json.loads(out.read_text())
    assert set(data["cells"]) == {"ce-weight=0.01/none", "ce-weight=0.1/none", "ce-weight=0.5/none"}
    assert (logdir / "language" / "ce-weight=0.5" / "none" / "seed0").is_dir()


def test_a_killed_run_resumes_even_with_other_seeds_and_levels(cli, monkeypatch, capsys):
    argv, out, _ = cli
    whole = out.with_name("whole.json")
    assert run([*argv, "--seeds", "1", "--levels", "none,both", "--out", str(whole)]) == 0
    real_evaluation = bench.LanguageTrainer.evaluation

    def killed_at_the_last_evaluation(self):  # the checkpoint of the evaluation at step 3 is on disk
        if self.step == 6:
            raise KeyboardInterrupt
        return real_evaluation(self)

    monkeypatch.setattr(bench.LanguageTrainer, "evaluation", killed_at_the_last_evaluation)
    assert run([*argv, "--seeds", "1", "--levels", "none,both"]) == 130
    assert "re-run the same command to continue" in capsys.readouterr().err
    assert out.with_name(out.name + ".ckpt.pt").exists()
    monkeypatch.setattr(bench.LanguageTrainer, "evaluation", real_evaluation)
    assert run([*argv, "--seeds", "2", "--levels", "none"]) == 0  # other flags: the interrupted job finishes first
    data, reference = json.loads(out.read_text()), json.loads(whole.read_text())
    for level in ("none", "both"):
        assert data["cells"][level]["runs"]["0"]["val_accuracy"] == reference["cells"][level]["runs"]["0"][
            "val_accuracy"]
    assert set(data["cells"]["none"]["runs"]) == {"0", "1"}
    assert not list(out.parent.glob("*.ckpt.*"))


def test_ctrl_c_saves_a_checkpoint_first_and_the_resumed_run_equals_an_uninterrupted_one(cli, tmp_path):
    """A real process and a real SIGINT: it stops at the next evaluation with a checkpoint, and the re-run says
    what it resumes and ends with the uninterrupted run's numbers."""
    argv, out, _ = cli
    command = [sys.executable, "-m", "benchmarks.language", *argv, "--seeds", "1", "--levels", "none", "--steps",
               "600", "--eval-every", "10", "--no-analysis"]
    whole = out.with_name("whole.json")
    assert subprocess.run([*command, "--out", str(whole)], capture_output=True).returncode == 0
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    checkpoint = out.with_name(out.name + ".ckpt.pt")
    while not checkpoint.exists():  # saved at the first evaluation: training is under way
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    said = process.communicate(timeout=120)[1]
    assert process.returncode == 130 and "saving a checkpoint at the next evaluation" in said
    assert checkpoint.exists() and "0" not in json.loads(out.read_text())["cells"].get("none", {}).get("runs", {})
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming 1 runs (1 still training) from" in resumed.stderr
    curve = lambda path: json.loads(path.read_text())["cells"]["none"]["runs"]["0"]["val_accuracy"]  # noqa: E731
    assert curve(out) == curve(whole)


def test_a_diverging_run_stops_with_one_line_and_no_nan_in_results(cli, capsys):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    before = out.read_text()
    diverging = out.with_name("diverging.json")
    assert run([*argv, "--seeds", "1", "--levels", "none", "--lr", "1e30", "--probe-lr", "1e30", "--out",
                str(diverging)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged at step" in errors[0] and "none seed 0" in errors[0]
    assert "Traceback" not in err
    assert "NaN" not in diverging.read_text() and "nan" not in diverging.read_text().lower().replace("nanmean", "")
    assert out.read_text() == before
    assert not list(out.parent.glob("*.ckpt.*"))  # a job that diverged before its first checkpoint leaves nothing


def test_an_unwritable_out_is_refused_before_any_training(cli, capsys, monkeypatch, tmp_path):
    argv, _, _ = cli
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(bench.LanguageTrainer, "train_step", lambda self: pytest.fail("trained before preflight"))
    assert run([*argv, "--seeds", "1", "--out", str(blocker / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and "--out" in err and err.count("\n") == 1


def test_bad_reinforce_settings_are_one_line_errors(cli, capsys):
    argv, _, _ = cli
    assert run([*argv, "--estimator", "reinforce", "--baseline-decay", "1.5"]) == 2
    assert "baseline_decay < 1" in capsys.readouterr().err


def test_a_visible_sweep_of_occluded_views_has_every_level_reference_and_analysis(cli, capsys):
    argv, out, logdir = cli
    assert run([*argv, "--seeds", "1", "--view", "occlude", "--sweep", "visible=0.25,0.5"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    levels = ["none", "receive", "feedback", "both", "read", "decide"]  # read, decide: default levels of the new views
    assert set(data["cells"]) == {f"visible={v}/{lv}" for v in ("0.25", "0.5") for lv in levels}
    references = {f"visible={v}/{r}" for v in ("0.25", "0.5") for r in bench.REFERENCES}
    assert set(data["references"]) == references
    run0 = data["cells"]["visible=0.5/decide"]["runs"]["0"]
    assert 0 <= run0["test_accuracy"] <= 100 and run0["analysis"]["joint_probe"] >= 0
    keys = {"teacher_message_probe", "teacher_message_bits", "teacher_distinct", "teacher_topsim",
            "teacher_topsim_view", "feature_probe",
            "joint_probe", "joint_probe_other_message", "intervention_drop", "message_gain", "agreement"}
    assert keys <= run0["analysis"].keys()
    assert data["cells"]["visible=0.25/none"]["summary"]["analysis"]["intervention_drop"]["n"] == 1
    assert data["config"]["view"] == "occlude"
    assert "Sweep over visible" in printed and "What the messages say" in printed
    assert "ref: untrained speaker" in printed and "vs read" in printed
    decide = data["cells"]["visible=0.5/decide"]["summary"]["paired"]
    assert set(decide) == {"none", "alone", "read", "both"}  # decide - read and decide - both beside vs none
    assert "invertible" not in printed
    assert (logdir / "language" / "sweep_visible.png").stat().st_size > 1000


def test_the_preset_sets_its_fields_and_explicit_flags_win(cli, monkeypatch):
    argv, _, _ = cli
    seen = []
    monkeypatch.setattr(bench, "_benchmark", lambda store, label, config, *a: seen.append(config) or [])
    monkeypatch.setattr(bench, "_report", lambda *a: None)
    assert run([*argv, "--seeds", "1", "--preset", "channel", "--visible", "0.25", "--no-analysis"]) == 0
    for field, value in bench.PRESETS["channel"].items():
        assert getattr(seen[0], field) == (0.25 if field == "visible" else value)
    help_text = "".join(bench.build_parser().format_help().split())  # argparse wraps lines at hyphens too
    assert all(f"--{f.replace('_', '-')}{v}" in help_text for f, v in bench.PRESETS["channel"].items())


def test_the_analysis_of_a_finished_run_is_computed_once_from_its_saved_weights(cli, monkeypatch):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "none", "--no-analysis"]) == 0
    assert "analysis" not in json.loads(out.read_text())["cells"]["none"]["runs"]["0"]
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0  # nothing to train; the analysis is added
    first = json.loads(out.read_text())["cells"]["none"]["runs"]["0"]["analysis"]
    monkeypatch.setattr(bench, "analyse", lambda *a, **k: pytest.fail("analysed twice"))
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    assert json.loads(out.read_text())["cells"]["none"]["runs"]["0"]["analysis"] == first


def test_a_results_file_edited_to_a_wrong_type_is_one_line_and_kept(cli, capsys):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "none", "--no-analysis"]) == 0
    data = json.loads(out.read_text())
    data["cells"]["none"]["runs"]["0"]["test_accuracy"] = "abc"
    out.write_text(json.dumps(data))
    capsys.readouterr()
    assert run([*argv, "--seeds", "1", "--levels", "none", "--no-analysis"]) == 2
    err = capsys.readouterr().err
    assert "holds test_accuracy = 'abc', not a number" in err and err.count("\n") == 1
    assert json.loads(out.read_text())["cells"]["none"]["runs"]["0"]["test_accuracy"] == "abc"


def test_a_job_that_cannot_fit_in_memory_is_refused_before_anything_is_allocated(cli, monkeypatch, capsys):
    argv, out, _ = cli
    from benchmarks import harness

    monkeypatch.setattr(harness, "available_memory", lambda device: (10 * 2**20, "available host memory"))
    assert run([*argv, "--seeds", "100", "--levels", "none,both"]) == 2
    err = capsys.readouterr().err
    assert "2 levels x 100 seeds = 200 runs in one job need at least" in err and "is 0.0 GiB" in err
    assert err.count("\n") == 1 and not out.exists()
