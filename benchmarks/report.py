"""A benchmark's tables and figures from its results file alone: ``python -m benchmarks.report RESULTS.json``.

``python -m benchmarks.report A.json B.json`` reports each file, then draws the sweep figures they share as
one (``<logdir>/overlay``): each file's lines, a line two files name drawn from the first; each file's speedups
stay paired with its own baseline.

``python -m benchmarks.report RESULTS.json -- FLAGS`` names the command's flags for a file written before
results files recorded their command.

The file records the command that wrote it; the report runs that command's own report code on the file
(read, never written; a run it lacks is one line, not a training). ``--summary DST`` writes the file
without its weights' paths, gzipped: what the docs' results tables are generated from. ``--docs`` rewrites
every generated block of the docs' pages from the summary it names::

    <!-- report: docs/results/language.json.gz -->
    ```text
    ...what the report prints...
    ```
    <!-- /report -->

and ``--docs --check`` (CI) fails, naming the pages, where a page differs from its summary.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

from benchmarks.cli import ArgumentParser, UsageError
from benchmarks.harness import SWEEP_DATA, plot_sweep, run_cli
from benchmarks.store import Store, read_only

BENCHMARKS = ("language", "teacher", "network", "sb3")
BLOCK = re.compile(r"(<!-- report: (\S+) -->\n```text\n)(.*?)(```\n<!-- /report -->)", re.DOTALL)
LOCATIONS = re.compile(r"^(results|curves|figures): .*$", re.MULTILINE)  # where this machine put them: not docs


def command(path: Path, data: dict, flags: list[str] | None = None) -> tuple[str, list[str]]:
    """The benchmark and the arguments of the last finished invocation that wrote ``data`` (read from ``path``;
    ``flags`` instead, when given: files written before invocations were recorded), without ``--out`` and
    ``--logdir``, which the report sets."""
    finished = [i["argv"][1:] for i in data.get("invocations", []) if i.get("status") == "finished"]
    if data["benchmark"] not in BENCHMARKS:
        raise UsageError(f"{path} holds {data['benchmark']} results; the report reads {', '.join(BENCHMARKS)}")
    if flags is None and not finished:
        raise UsageError(f"{path} records no finished invocation (written before they were recorded?): give the "
                         f"command's flags after the file, e.g. python -m benchmarks.report {path} -- --seeds 5")
    argv, kept = list(flags if flags is not None else finished[-1]), []
    while argv:
        arg = argv.pop(0)
        if arg in ("--out", "--logdir"):
            argv.pop(0)
        elif not arg.startswith(("--out=", "--logdir=")):
            kept.append(arg)
    return data["benchmark"], kept


def report(path: Path, logdir: Path, flags: list[str] | None = None) -> None:
    """Print the tables of ``path`` and draw its figures under ``logdir``."""
    if not path.is_file():
        raise UsageError(f"{path} is not a file; pass a results file written by a benchmark")
    benchmark, argv = command(path, Store._read(path, None, {}), flags)
    print(f"python -m benchmarks.{benchmark} {' '.join(argv)}".rstrip())
    main = importlib.import_module(f"benchmarks.{benchmark}").main
    with read_only():
        main([*argv, "--out", str(path), "--logdir", str(logdir)])


def overlay(logdir: Path, paths: list[Path]) -> list[Path]:
    """Draw again, as one figure under ``logdir/overlay``, each sweep figure that every one of ``paths``' reports
    drew under ``logdir``; the figures drawn."""
    folders, drawn = [logdir / p.stem for p in paths], []
    if len(set(folders)) < len(folders):
        raise UsageError(f"{', '.join(map(str, paths))}: two files of one name report into one folder; rename one")
    for name in sorted(f.name for f in folders[0].glob(f"*{SWEEP_DATA}")):
        if not all((f / name).is_file() for f in folders):
            continue
        parts = [json.loads((f / name).read_text()) for f in folders]
        first = parts[0]
        lines, references = {}, {}
        for part, path in zip(parts, paths, strict=True):
            if part["flag"] != first["flag"] or sorted(part["values"]) != sorted(first["values"]):
                raise UsageError(f"{paths[0]} and {path} sweep different values ({first['flag']}: "
                                 f"{','.join(first['values'])}; {part['flag']}: {','.join(part['values'])}); "
                                 f"overlay files of the same sweep")
            at = [part["values"].index(v) for v in first["values"]]
            for merged, given in ((lines, part["lines"]), (references, part["references"] or {})):
                for label, per_value in given.items():
                    merged.setdefault(label, [per_value[i] for i in at])
        figure = logdir / "overlay" / name.removesuffix(SWEEP_DATA)
        plot_sweep(figure.with_suffix(".png"), first["flag"], first["values"], lines, first["ylabel"],
                   references or None, first["intervals"])
        drawn.append(figure.with_suffix(".png"))
    return drawn


def summary(path: Path, out: Path, flags: list[str] | None = None) -> None:
    """``path`` without the paths of its weights, compact and gzipped: small enough to commit (with ``flags``
    recorded as its command when given)."""
    data = Store._read(path, None, {})
    benchmark, argv = command(path, data, flags)
    if flags is not None:
        data.setdefault("invocations", []).append({"argv": [f"benchmarks/{benchmark}.py", *argv],
                                                   "status": "finished", "given_to": "benchmarks.report"})
    for cell in data["cells"].values():
        for run in cell["runs"].values():
            run.pop("weights", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0))


def generated(summary_path: Path) -> str:
    """What a docs block of ``summary_path`` holds: the report's text, without this machine's paths."""
    text = io.StringIO()
    with tempfile.TemporaryDirectory() as figures, contextlib.redirect_stdout(text):
        report(summary_path, Path(figures))
    return LOCATIONS.sub("", text.getvalue()).strip() + "\n"


def docs(root: Path, check: bool) -> list[Path]:
    """Rewrite (or, with ``check``, compare) every generated block under ``root``; the pages that differ."""
    stale = []
    for page in sorted(root.rglob("*.md")):
        text = page.read_text()
        new = BLOCK.sub(lambda m: m[1] + generated(Path(m[2])) + m[4], text)
        if new != text:
            stale.append(page)
            if not check:
                page.write_text(new)
    return stale


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="*", type=Path, help="a results file (.json, or a .json.gz summary); "
                   "several: each one's report, then their shared sweep figures as one")
    p.option("--logdir", "runs/report", "where the figures go")
    p.option("--summary", None, "write RESULTS without its weights' paths, gzipped, to this file",
             default_text="none: print the tables")
    p.option("--docs", None, "rewrite the generated blocks of every page under this folder (e.g. docs)",
             default_text="none")
    p.option("--check", False, "with --docs: change nothing, fail if a page differs from its summary",
             action="store_true", read_with={"docs": None})
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: the command's flags, for an old file
    args, flags = build_parser().parse(argv[:cut]), argv[cut + 1 :] if cut < len(argv) else None
    if bool(args.results) == (args.docs is not None):
        raise UsageError("give a results file or --docs FOLDER (not both)")
    if len(args.results) > 1 and (args.summary or flags is not None):
        raise UsageError("--summary and -- FLAGS read one results file; give one")
    if args.docs:
        stale = docs(Path(args.docs), args.check)
        if stale and args.check:
            print(f"generated blocks out of date in {', '.join(map(str, stale))}; run python -m benchmarks.report "
                  f"--docs {args.docs}", file=sys.stderr)
            return 1
        print(f"{len(stale)} page(s) {'differ' if args.check else 'rewritten'}")
        return 0
    if args.summary:
        summary(args.results[0], Path(args.summary), flags)
        return 0
    for path in args.results:
        report(path, Path(args.logdir), flags)
    if len(args.results) > 1:
        figures = overlay(Path(args.logdir), args.results)
        print(f"\noverlay figures: {', '.join(map(str, figures)) or 'none (the files share no sweep)'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
