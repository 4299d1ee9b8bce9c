import json
import os

import pytest

from benchmarks import language as bench
from tests.conftest import exit_code

SMALL = ["--steps", "6", "--eval-every", "3", "--reference-epochs", "1", "--hidden", "16", "--critic-hidden", "16",
         "--message-length", "4", "--batch-size", "8"]  # fmt: skip


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
    assert "64.4" in printed and "71.4" in printed and "raw noisy view" in printed
    data = json.loads(out.read_text())
    assert data["benchmark"] == "language" and data["config"]["noise"] == 0.1
    for level, thesis in (("none", 64.4), ("both", 71.4)):
        entry = data["levels"][level]
        assert len(entry["test_accuracy"]) == 2 and entry["thesis"] == thesis
        assert entry["mean"] == pytest.approx(sum(entry["test_accuracy"]) / 2)
    assert set(data["references"]) == {"raw_view", "untrained_hidden"}
    assert data["wall_time_s"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = logdir / "language" / "noise0.1" / "both" / "seed1"
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/mi_loss_student", "train/communication_ce_student", "train/temperature", "val/accuracy"} <= tags
    assert [e.step for e in events.Scalars("val/accuracy")] == [3, 6]
    assert (logdir / "language" / "noise0.1" / "val_accuracy.png").stat().st_size > 1000
    assert not list(out.parent.glob("*.ckpt.pt")) and not list(out.parent.glob(".*"))


def test_rerun_skips_finished_runs_and_trains_only_new_ones(cli, monkeypatch):
    argv, out, _ = cli
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    first = json.loads(out.read_text())
    trained = []
    real = bench.LanguageTrainer

    def recording(config, splits, runs, speaker_cls=None):
        trained.append(list(runs))
        return real(config, splits, runs, speaker_cls)

    monkeypatch.setattr(bench, "LanguageTrainer", recording)
    assert run([*argv, "--seeds", "1", "--levels", "none"]) == 0
    assert trained == []  # nothing left to do
    assert run([*argv, "--seeds", "1", "--levels", "none,receive"]) == 0
    assert trained == [[("receive", 0)]]
    data = json.loads(out.read_text())
    assert data["levels"]["none"]["runs"] == first["levels"]["none"]["runs"]


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
    assert a["levels"] == b["levels"] and a["references"] == b["references"]


def test_agent_plugs_in_from_the_command_line(cli):
    argv, out, _ = cli
    agent = "tests.test_language_trainer:TinySpeaker"  # defined only in the tests
    assert run([*argv, "--seeds", "1", "--levels", "feedback", "--agent", agent]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["agent"] == agent
    assert 0 <= data["levels"]["feedback"]["test_accuracy"][0] <= 100


BAD_INPUTS = [
    (["--noise", "1.5"], "noise must be a probability"),
    (["--levels", "foo"], "unknown level(s) foo"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--agent", "nosuch:Thing"], "cannot import module 'nosuch'"),
    (["--agent", "json:NoSuchClass"], "has no class 'NoSuchClass'"),
    (["--agent", "json"], "package.module:ClassName"),
    (["--agent", "collections:OrderedDict"], "does not follow the speaker protocol"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--hidden", "a,b"], "--hidden must be positive"),
    (["--temperature-factor", "2"], "temperature"),
    (["--batch-size", "5000"], "exceeds the 100 training images"),
    (["--noise", "abc"], "invalid float value"),
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
    assert set(data["levels"]) == {"none", "receive", "feedback", "both"}
    assert all(len(e["test_accuracy"]) == 1 for e in data["levels"].values())
    assert data["references"]["raw_view"] > 80  # a linear probe undoes a fixed inversion mask
    assert all(e["mean"] > 20 for e in data["levels"].values())  # well above chance after 150 steps
    assert "Table 4.1" in capsys.readouterr().out


def test_both_estimators_side_by_side_with_their_own_results_and_runs(cli, capsys, monkeypatch):
    argv, out, logdir = cli
    assert run([*argv, "--seeds", "1", "--levels", "none,feedback", "--estimator", "reinforce"]) == 0
    reinforce_file = out.with_name("language-reinforce.json")
    first = json.loads(reinforce_file.read_text())
    assert first["config"]["estimator"] == "reinforce" and set(first["levels"]) == {"none", "feedback"}
    assert not out.exists()  # the Gumbel results are another file
    trained = []
    real = bench.LanguageTrainer

    def recording(config, splits, runs, speaker_cls=None):
        trained.append(config.estimator)
        return real(config, splits, runs, speaker_cls)

    monkeypatch.setattr(bench, "LanguageTrainer", recording)
    capsys.readouterr()
    assert run([*argv, "--seeds", "1", "--levels", "none,feedback", "--estimator", "both"]) == 0
    assert trained == ["gumbel"]  # REINFORCE's runs were finished already
    printed = capsys.readouterr().out
    assert "Table 4.1 by estimator" in printed and "gumbel" in printed and "reinforce" in printed
    assert json.loads(out.read_text())["config"]["estimator"] == "gumbel"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "language" / "noise0.1-reinforce" / "feedback" / "seed0")).Reload()
    assert "train/message_entropy_teacher" in events.Tags()["scalars"]


def test_bad_reinforce_settings_are_one_line_errors(cli, capsys):
    argv, _, _ = cli
    assert run([*argv, "--estimator", "reinforce", "--baseline-decay", "1.5"]) == 2
    assert "baseline_decay < 1" in capsys.readouterr().err
