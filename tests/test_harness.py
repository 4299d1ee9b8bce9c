import json
import os
import stat

import pytest

from benchmarks.harness import Results, UsageError, format_table, mean_std, parse_list, save_json


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


def test_results_refuse_another_config_and_a_corrupt_file(tmp_path):
    path = tmp_path / "r.json"
    results = Results(path, "language", {"noise": 0.1, "hidden": (4, 4)})
    results.data["levels"] = {"none": {}}
    results.save()
    assert Results(path, "language", {"noise": 0.1, "hidden": (4, 4)}).data["levels"] == {"none": {}}
    with pytest.raises(UsageError, match="differs in: noise"):
        Results(path, "language", {"noise": 0.2, "hidden": (4, 4)})
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not a readable results file"):
        Results(path, "language", {})


def test_parse_list_and_statistics():
    assert parse_list("both, none", ["none", "receive", "both"], "level(s)") == ["none", "both"]
    with pytest.raises(UsageError, match="unknown level"):
        parse_list("none,shout", ["none"], "level(s)")
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.4142135))
    assert mean_std([5.0]) == (5.0, 0.0)
    table = format_table(["a", "bb"], [["x", 1], ["yyy", 22]]).splitlines()
    assert table[0] == "a    bb" and table[1] == "---  --" and table[3] == "yyy  22"


def test_format_counts_says_how_many_runs_got_there():
    from benchmarks.harness import format_counts

    assert format_counts([1000, 3000]) == "2,000 ± 1,414"
    assert format_counts([1000, None]) == "1,000 (1/2)"
    assert format_counts([None, None]) == "never"
