"""The results store every benchmark writes: atomic, locked, checked, resumable."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from benchmarks.cli import UsageError
from benchmarks.harness import format_counts, format_table, parse_list
from benchmarks.store import Store, format_summary, mean_std, preflight, save_json


def test_atomic_json_has_ordinary_permissions_and_no_leftovers(tmp_path):
    path = tmp_path / "sub" / "r.json"
    save_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    save_json(path, {"kept": True})
    with pytest.raises(TypeError):
        save_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_store_keeps_runs_weights_and_refuses_another_config(tmp_path):
    path = tmp_path / "r.json"
    with Store(path, "language", {"noise": 0.1, "hidden": (4, 4)}) as store:
        store.add("none", 0, {"test_accuracy": 50.0}, {"w": torch.ones(2)})
        store.add("none", 1, {"test_accuracy": 60.0})
        store.summarise(["none"], [0, 1], ["test_accuracy"])
    data = json.loads(path.read_text())
    assert data["schema"] == 2 and data["cells"]["none"]["summary"]["test_accuracy"] == {
        "mean": 55.0, "std": pytest.approx(7.0710678), "n": 2}
    weights = tmp_path / data["cells"]["none"]["runs"]["0"]["weights"]
    assert torch.equal(torch.load(weights, weights_only=True)["w"], torch.ones(2))
    with Store(path, "language", {"noise": 0.1, "hidden": [4, 4]}) as again:
        assert again.done("none", 1) and not again.done("none", 2)
    with pytest.raises(UsageError, match="differs in: noise"):
        Store(path, "language", {"noise": 0.2, "hidden": (4, 4)})
    assert not (tmp_path / "r.json.lock").exists()  # a refused open releases the lock
    with Store(path, "language", {"noise": 0.1, "hidden": [4, 4], "added": None}) as later:  # a field added since
        assert later.done("none", 1)
    with pytest.raises(UsageError, match="differs in: added"):
        Store(path, "language", {"noise": 0.1, "hidden": (4, 4), "added": 3})


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not a readable results file"),
    ('{"benchmark": "language", "config": {}, "levels": {}}', "earlier commchannels"),
    ('{"benchmark": "language", "schema": 2, "config": {}, "cells": [], "references": {}}', "damaged shape"),
    ("[1, 2]", "not a commchannels results file"),
])
def test_corrupt_old_or_wrong_shape_results_get_one_line(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as e:
        Store(path, "language", {})
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_second_process_on_the_same_out_is_refused(tmp_path):
    path = tmp_path / "r.json"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from benchmarks.store import Store\n"
        f"s = Store(Path({str(path)!r}), 'language', {{}}); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="another process is writing"):
            Store(path, "language", {})
    finally:
        holder.kill()
        holder.wait()
    with Store(path, "language", {}):  # the lock died with its holder
        pass


def test_temporaries_of_a_killed_write_are_cleaned_at_the_next_start(tmp_path):
    path = tmp_path / "r.json"
    stale = tmp_path / ".r.json.abc123.tmp"
    stale.write_text("half a file")
    with Store(path, "language", {}):
        assert not stale.exists()


def test_preflight_names_the_flag_of_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=r"cannot write to .*file/sub.*pass another --logdir"):
        preflight([(tmp_path / "ok", "--out"), (blocker / "sub", "--logdir")])
    assert (tmp_path / "ok").is_dir()


def test_parse_list_and_statistics():
    assert parse_list("both, none", ["none", "receive", "both"], "level(s)") == ["none", "both"]
    with pytest.raises(UsageError, match="unknown level"):
        parse_list("none,shout", ["none"], "level(s)")
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.4142135))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert format_summary([1.0, 3.0]) == "2.0 ± 1.4" and format_summary([5.0]) == "5.0"
    table = format_table(["a", "bb"], [["x", 1], ["yyy", 22]]).splitlines()
    assert table[0] == "a    bb" and table[1] == "---  --" and table[3] == "yyy  22"


def test_format_counts_says_how_many_runs_got_there():
    assert format_counts([1000, 3000]) == "2,000 ± 1,414"
    assert format_counts([1000, None]) == "1,000 (1/2)"
    assert format_counts([None, None]) == "never"


def test_lock_is_released_after_a_crash_inside(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(RuntimeError), Store(path, "language", {}):
        raise RuntimeError("boom")
    assert not (tmp_path / "r.json.lock").exists()
    with Store(path, "language", {}):
        assert (tmp_path / "r.json.lock").exists()


def test_each_invocation_appends_where_it_came_from_and_what_it_did(tmp_path, capsys):
    path = tmp_path / "r.json"
    with Store(path, "language", {}) as store:
        store.add("none", 0, {"test_accuracy": 50.0})
    checkpoint = store.checkpoint()
    checkpoint.write_bytes(b"a job a kill interrupted")
    save_json(checkpoint.with_suffix(".json"), [["none", 1]])
    with Store(path, "language", {}) as store:
        for job in store.jobs("", ["none"], [0, 1]):
            assert job == [("none", 1)]  # the interrupted job, resumed
            store.add("none", 1, {"test_accuracy": 60.0})
    with Store(path, "language", {}):  # a re-run: nothing left to train
        pass
    with pytest.raises(KeyboardInterrupt), Store(path, "language", {}):
        raise KeyboardInterrupt
    printed = capsys.readouterr().out
    assert "this invocation: trained 1 runs (1 resumed from a checkpoint), read 1 finished runs from" in printed
    assert "this invocation: trained 0 runs, read 2 finished runs from" in printed
    calls = json.loads(path.read_text())["invocations"]
    assert [(c["runs_trained"], c["runs_resumed"], c["runs_read"], c["status"]) for c in calls] == [
        (1, 0, 0, "finished"), (1, 1, 1, "finished"), (0, 0, 2, "finished"), (0, 0, 2, "interrupted")]
    assert calls[0]["argv"] == sys.argv and calls[0]["version"] == "0.1.0" and calls[0]["ended"] >= calls[0]["started"]
    assert calls[0]["commit"] is None or len(calls[0]["commit"].split("+")[0]) == 40


def test_a_killed_invocation_keeps_where_it_came_from_and_its_time_up_to_its_last_save(tmp_path):
    path = tmp_path / "r.json"
    killed = Store(path, "language", {})  # never closed: killed after its first finished run
    killed.add("none", 0, {"test_accuracy": 50.0})
    killed.lock.release()
    with Store(path, "language", {}) as store:
        store.add("none", 1, {"test_accuracy": 60.0})
    data = json.loads(path.read_text())
    calls = data["invocations"]
    assert [(c["status"], c["runs_trained"], c["argv"]) for c in calls] == [
        ("running", 1, sys.argv), ("finished", 1, sys.argv)]
    assert all(c["wall_time_s"] > 0 for c in calls)
    assert data["wall_time_s"] == pytest.approx(sum(c["wall_time_s"] for c in calls))


def test_a_run_holding_a_wrong_type_is_one_line_naming_it(tmp_path):
    path = tmp_path / "r.json"
    with Store(path, "language", {}) as store:
        store.add("none", 0, {"test_accuracy": "abc"})
        with pytest.raises(UsageError, match=r"run none seed 0 holds test_accuracy = 'abc', not a number"):
            store.summarise(["none"], [0], ["test_accuracy"])


def test_an_interrupted_job_resumes_with_the_cells_as_they_were_configured(tmp_path):
    path = tmp_path / "r.json"
    with Store(path, "network", {}) as store:
        jobs = store.jobs("", ["a", "b"], [0], per_cell=True, specs={"a": {"lr": 1}, "b": {"lr": 2}})
        assert next(jobs) == [("a", 0)] and store.specs == {"a": {"lr": 1}}
        store.checkpoint().write_bytes(b"killed here")  # the job's checkpoint: a kill leaves it and the job
    with Store(path, "network", {}) as store:  # the command changed: a's configuration and a new cell c
        jobs = store.jobs("", ["a", "c"], [0], per_cell=True, specs={"a": {"lr": 9}, "c": {"lr": 3}})
        assert next(jobs) == [("a", 0)] and store.specs == {"a": {"lr": 1}}  # finished as it started
        assert next(jobs) == [("c", 0)] and store.specs == {"c": {"lr": 3}}
        assert next(jobs, None) is None and not store.checkpoint().exists()


def test_a_job_from_before_the_kept_configurations_resumes_only_cells_it_still_configures(tmp_path):
    path = tmp_path / "r.json"
    with Store(path, "network", {}) as store:
        store.checkpoint().write_bytes(b"killed here")
        store.checkpoint().with_suffix(".json").write_text('[["gone", 0]]')  # the job file as it was written before
        with pytest.raises(UsageError, match=r"cannot resume the unfinished runs of gone .* delete"):
            next(store.jobs("", ["a"], [0], specs={"a": {"lr": 1}}))
