"""benchmarks.report: a results file alone gives the tables its benchmark printed, writes nothing, refuses a
file that lacks runs in one line, and keeps the docs' generated blocks equal to their summaries."""

from __future__ import annotations

import gzip
import json
import sys

import pytest

from benchmarks import network, report
from benchmarks.cli import UsageError
from benchmarks.harness import SWEEP_DATA, plot_sweep
from tests.conftest import exit_code, make_dataset


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys):
    """A small Table 2.2 trained through the CLI (as a user runs it: the command is recorded), and what it printed."""
    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300, n_test=40)
    out = tmp_path / "network.json"
    argv = ["--dataset", "fashion-mnist", "--data-dir", str(root), "--batch-size", "4", "--steps", "8",
            "--eval-every", "4", "--val-samples", "0", "--nodes", "1,3", "--content", "none,labels", "--seeds", "1,2"]
    monkeypatch.setattr(sys, "argv", ["benchmarks/network.py", *argv, "--out", str(out)])
    assert exit_code(network.main, [*argv, "--out", str(out), "--logdir", str(tmp_path / "runs")]) == 0
    return out, tables(capsys.readouterr().out)


def tables(printed: str) -> str:
    """From the first table on, without where this machine put files and what this invocation did."""
    kept = [line for line in printed[printed.index("Table 2.2") :].splitlines()
            if not line.startswith(("results:", "this invocation:"))]
    return "\n".join(kept).strip()


def test_the_report_prints_the_benchmarks_tables_and_writes_nothing(trained, tmp_path, capsys):
    out, printed = trained
    before = out.read_bytes()
    assert exit_code(report.main, [str(out), "--logdir", str(tmp_path / "figures")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("python -m benchmarks.network --dataset fashion-mnist")
    assert tables(text) == printed and "3nodes-labels" in printed
    assert out.read_bytes() == before and not out.with_name(out.name + ".lock").exists()
    assert (tmp_path / "figures" / "network" / "figure_table_2_2.png").stat().st_size > 1000


def test_a_file_that_lacks_runs_is_one_line_and_trains_nothing(trained, capsys):
    out, _ = trained
    data = json.loads(out.read_text())
    data["invocations"][-1]["argv"] = [a if a != "1,2" else "1-3" for a in data["invocations"][-1]["argv"]]
    out.write_text(json.dumps(data))
    assert exit_code(report.main, [str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out} lacks 3 runs (1node, 3nodes-labels, 3nodes-none)") and "\n" not in err


def test_an_old_file_reads_with_the_flags_given_and_refuses_without(trained, capsys):
    out, printed = trained
    data = json.loads(out.read_text())
    argv = data.pop("invocations")[-1]["argv"][1:]
    out.write_text(json.dumps(data))
    assert exit_code(report.main, [str(out)]) == 2
    assert "records no finished invocation" in capsys.readouterr().err
    assert exit_code(report.main, [str(out), "--", *argv]) == 0
    assert tables(capsys.readouterr().out) == printed


def test_a_summary_drops_the_weights_and_reports_the_same(trained, tmp_path, capsys):
    out, printed = trained
    summary = tmp_path / "docs" / "results" / "network.json.gz"
    assert exit_code(report.main, [str(out), "--summary", str(summary)]) == 0
    data = json.loads(gzip.decompress(summary.read_bytes()))
    runs = [run for cell in data["cells"].values() for run in cell["runs"].values()]
    assert len(runs) == 6 and not any("weights" in run for run in runs)
    assert exit_code(report.main, [str(summary)]) == 0
    assert tables(capsys.readouterr().out) == printed


def test_docs_blocks_are_rewritten_from_their_summary_and_checked(trained, tmp_path, capsys):
    out, printed = trained
    summary = tmp_path / "network.json.gz"
    report.summary(out, summary)
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(f"# Results\n\n<!-- report: {summary} -->\n```text\ntyped by hand\n```\n<!-- /report -->\nmore\n")
    assert exit_code(report.main, ["--docs", str(page.parent), "--check"]) == 1
    assert "typed by hand" in page.read_text()  # --check changes nothing
    assert exit_code(report.main, ["--docs", str(page.parent)]) == 0
    text = page.read_text()
    assert "typed by hand" not in text and printed.splitlines()[0] in text and text.endswith("<!-- /report -->\nmore\n")
    capsys.readouterr()
    assert exit_code(report.main, ["--docs", str(page.parent), "--check"]) == 0
    assert "0 page(s) differ" in capsys.readouterr().out
    assert exit_code(report.main, [str(summary), "--check"]) == 2  # --check reads only with --docs
    assert "--check does nothing without --docs" in capsys.readouterr().err


def test_several_files_sweep_figures_are_drawn_as_one(tmp_path):
    """Each file's lines in the first file's order of values; a line both files name comes from the first."""
    plot_sweep(tmp_path / "a" / "speedup_vs_noise.png", "noise", ["0", "0.4"],
               {"reducible": [[1.0, 0.5, 2.0], [4.0, 2.0, 8.0]]}, "speedup", intervals=True)
    plot_sweep(tmp_path / "b" / "speedup_vs_noise.png", "noise", ["0.4", "0"],
               {"learned": [[3.0, 1.0, 9.0], []], "reducible": [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]}, "speedup",
               intervals=True)
    plot_sweep(tmp_path / "b" / "sweep_other.png", "other", ["1"], {"x": [[1.0]]}, "accuracy")
    [figure] = report.overlay(tmp_path, [tmp_path / "a.json", tmp_path / "b.json"])
    assert figure == tmp_path / "overlay" / "speedup_vs_noise.png" and figure.stat().st_size > 1000
    drawn = json.loads(figure.with_suffix(SWEEP_DATA).read_text())
    assert drawn["values"] == ["0", "0.4"] and drawn["intervals"]
    assert drawn["lines"] == {"reducible": [[1.0, 0.5, 2.0], [4.0, 2.0, 8.0]], "learned": [[], [3.0, 1.0, 9.0]]}


def test_files_of_different_sweeps_are_refused_in_one_line(tmp_path):
    for folder, values in (("a", ["0", "0.4"]), ("b", ["0", "0.2"])):
        plot_sweep(tmp_path / folder / "sweep_noise.png", "noise", values, {"x": [[1.0], [2.0]]}, "accuracy")
    with pytest.raises(UsageError, match="sweep different values"):
        report.overlay(tmp_path, [tmp_path / "a.json", tmp_path / "b.json"])
