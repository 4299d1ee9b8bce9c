"""Reproduce the thesis' Table 4.1: ``python -m benchmarks.language --noise 0.1``.

Trains every (communication level, seed) run as one batched model, prints test accuracy of the
student's linear probe (at its best validation accuracy) beside the thesis, with two reference rows
measured in the same run, writes ``--out`` atomically, TensorBoard runs under
``<logdir>/<out name>/<level>/seed<k>`` and a PNG of the validation curves beside them, and keeps
each run's best-validation weights in ``<out name>.weights/``. A re-run of the same command skips
finished runs and resumes unfinished ones from a checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from agents.loading import load_class
from benchmarks.cli import ArgumentParser, UsageError, add_common, variants
from benchmarks.harness import (
    Sink,
    device_of,
    flat_hparams,
    format_table,
    parse_list,
    plot_curves,
    plot_sweep,
    run_cli,
)
from benchmarks.store import Store, format_summary, mean_std, prefix, preflight
from envs.data import DATASETS, load_splits
from envs.language import split_views
from trainers.language import (
    ESTIMATORS,
    LEVELS,
    STUDENT,
    LanguageConfig,
    LanguageTrainer,
    check_speaker,
    default_speaker,
    run_modules,
)
from trainers.probe import fit_linear_probe, map_splits

THESIS = {"none": 64.4, "receive": 65.7, "feedback": 69.4, "both": 71.4}  # Table 4.1, noise 0.1
QUICK = {"steps": 150, "eval_every": 50, "log_every": 25, "seeds": 1, "reference_epochs": 1}
REFERENCES = {"raw_view": "ref: raw noisy view", "untrained_hidden": "ref: untrained speaker"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.language", description=__doc__.split("\n")[0])
    p.config(LanguageConfig, exclude=("estimator",))
    p.option("--estimator", "gumbel", "speakers' gradients: Gumbel-Softmax relaxation, REINFORCE on sampled "
             "messages, or both (a sweep over the two)", choices=[*ESTIMATORS, "both"])  # fmt: skip
    p.option("--levels", ",".join(LEVELS), "comma-separated communication levels")
    p.option("--dataset", "mnist", "dataset of the views", choices=list(DATASETS))
    p.option("--data-dir", None, "dataset root", default_text="$COMMCHANNELS_DATA, else a per-user cache")
    p.option("--agent", None, "speaker class as package.module:ClassName", default_text="the thesis' speaker")
    p.option("--reference-epochs", 10, "epochs of the reference probes (1 with --quick)", type=int)
    p.fixed = {"levels", "dataset"}
    add_common(p, out="results/language[-reinforce|-both][-quick].json", quick="5 (1 with --quick)|every level, one "
               "seed, 150 steps")  # fmt: skip
    return p


def references(splits, config: LanguageConfig, seed: int, speaker_cls: type, epochs: int) -> dict[str, float]:
    """Linear probes on the student's raw view and on its untrained speaker's hidden layer (a resample
    view's noise is drawn once per split here, fixed as at evaluation)."""
    view = config.partial_view()
    raw = split_views(splits, view.masks(splits.train.images.shape[1], seed), view, seed)[STUDENT]
    speaker = run_modules(seed, config, splits.train.images.shape[1], speaker_cls)[0]["student"].eval()
    hidden = map_splits(raw, lambda x: speaker(x)[1])
    return {
        "raw_view": fit_linear_probe(raw, epochs, lr=config.probe_lr, seed=seed),
        "untrained_hidden": fit_linear_probe(hidden, epochs, lr=config.probe_lr, seed=seed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    if args.estimator == "both":
        if args.sweep:
            raise UsageError("--estimator both is a sweep over the estimators; drop it or --sweep")
        args.sweep = "estimator=gumbel,reinforce"
    levels = parse_list(args.levels, LEVELS, "level(s)")
    seeds = args.seeds if args.seeds is not None else 5
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    device = device_of(args)
    splits = load_splits(args.dataset, args.data_dir)
    chosen = []
    for label, v in variants(parser, args):
        config = parser.build(LanguageConfig, v, estimator=v.estimator)
        try:
            speaker_cls = load_class(v.agent) if v.agent else default_speaker(config)
            check_speaker(speaker_cls, config, splits.train.images.shape[1])
        except ValueError as e:
            raise UsageError(str(e)) from None
        if config.batch_size > len(splits.train.images):
            raise UsageError(f"--batch-size {config.batch_size} exceeds the {len(splits.train.images)} training images")
        if v.reference_epochs < 1:
            raise UsageError(f"--reference-epochs must be >= 1, got {v.reference_epochs}")
        chosen.append((label, config, speaker_cls, v))
    suffix = {"gumbel": ""}.get(args.estimator, f"-{args.estimator}") + ("-quick" if args.quick else "")
    out = Path(args.out or f"results/language{suffix}.json")
    swept = parser.sweep_flag(args.sweep)
    identity = {**chosen[0][1].to_dict(), "dataset": args.dataset, "agent": args.agent,
                "reference_epochs": args.reference_epochs}  # fmt: skip
    root = Path(args.logdir) / out.stem
    preflight([(root, "--logdir")])
    with Store(out, "language", identity, swept) as store:
        started = time.time()
        for label, config, speaker_cls, v in chosen:
            _benchmark(store, label, config, speaker_cls, levels, seeds, splits, v, device, root)
        store.add_time(time.time() - started)
        store.save()
        _report(store, chosen, levels, seeds, root, swept)
    return 0


def _benchmark(store, label, config, speaker_cls, levels, seeds, splits, args, device, root) -> None:
    """Reference probes, then every pending (level, seed) run of one variant, in as few jobs as resume allows."""
    at = prefix(label)
    for k in range(seeds):
        if any(str(k) not in store.data["references"].get(at + name, {}) for name in REFERENCES):
            values = references(splits, config, k, speaker_cls, args.reference_epochs)
            for name, value in values.items():
                store.reference(at + name, k, value)
    hparams = {**flat_hparams(config), "dataset": args.dataset, "agent": args.agent or "thesis"}
    for job in store.jobs(label, levels, seeds):
        trainer = LanguageTrainer(config, splits, [(cell.rsplit("/", 1)[-1], k) for cell, k in job], speaker_cls,
                                  device=device)  # fmt: skip
        with Sink(
            store, job, root, hparams, _headline, desc=f"{label or 'language'}: {len(job)} runs", device=device
        ) as sink:
            trainer.fit(sink, store.checkpoint(label))


def _headline(result) -> dict[str, float]:
    return {"test_accuracy": result.test_accuracy, "best_val_accuracy": result.best_val_accuracy}


def _report(store: Store, chosen, levels: list[str], seeds: int, root: Path, swept) -> None:
    data = store.data
    for label, config, *_ in chosen:
        at = prefix(label)
        cells = [at + lv for lv in levels]
        store.summarise(cells, seeds, ["test_accuracy", "best_val_accuracy"])
        accuracy = {lv: [store.runs(at + lv)[k]["test_accuracy"] for k in range(seeds)] for lv in levels}
        rows = []
        for level in levels:
            gap = ""
            if "none" in accuracy and level != "none":
                m, s = mean_std([a - b for a, b in zip(accuracy[level], accuracy["none"], strict=True)])
                gap = f"{m:+.1f}" + (f" ± {s / math.sqrt(seeds):.1f}" if seeds > 1 else "")
            rows.append([level, format_summary(accuracy[level]), f"{THESIS[level]:.1f}", gap])
        for name, text in REFERENCES.items():
            rows.append([text, f"{mean_std([data['references'][at + name][str(k)] for k in range(seeds)])[0]:.1f}",
                         "-", ""])  # fmt: skip
        print(f"\nTable 4.1, {label + ', ' if label else ''}noise {config.noise:g}, {config.estimator}: student's "
              f"linear probe, test accuracy (%) at best validation, mean ± std over {seeds} seed(s)")  # fmt: skip
        print(format_table(["level", "ours", "thesis", "vs none (paired, ± s.e.)"], rows))
        curves = {}
        for level in levels:
            runs = [store.runs(at + level)[k] for k in range(seeds)]
            curves[level] = (runs[0]["steps"], [r["val_accuracy"] for r in runs])
        plot_curves(root / at / "val_accuracy.png", curves, "training step", "validation accuracy (%)",
                    f"Student's linear probe, {label or f'noise {config.noise:g}'}")  # fmt: skip
    if swept:
        name, _, values = swept
        texts = [t for t, _ in values]
        lines = {lv: [[store.runs(f"{name}={t}/{lv}")[k]["test_accuracy"] for k in range(seeds)] for t in texts]
                 for lv in levels}  # fmt: skip
        print(f"\nSweep over {name}: test accuracy (%), mean ± std over {seeds} seed(s)")
        print(format_table([name, *levels], [[t, *(format_summary(lines[lv][i]) for lv in levels)]
                                             for i, t in enumerate(texts)]))  # fmt: skip
        plot_sweep(root / f"sweep_{name}.png", name, texts, lines, "test accuracy (%)")
    print(
        f"\nresults: {store.path}   curves: {root}   TensorBoard: tensorboard --logdir {root}   "
        f"wall time: {data['wall_time_s']:.0f} s"
    )


if __name__ == "__main__":
    run_cli(main)
