"""Reproduce the thesis' Table 4.1: ``python -m benchmarks.language --noise 0.1``.

Trains every (communication level, seed) run as one batched model, prints test accuracy of the
student's linear probe (at its best validation accuracy) beside the thesis, with two reference rows
measured in the same run, writes ``--out`` atomically, TensorBoard runs under
``<logdir>/language/noise<NOISE>/<level>/seed<k>`` and a PNG of the validation curves beside them.
A re-run of the same command skips finished runs and resumes unfinished ones from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from tqdm import tqdm

from agents.loading import load_class
from benchmarks.harness import (
    ArgumentParser,
    Results,
    UsageError,
    format_table,
    mean_std,
    parse_list,
    plot_curves,
    run_cli,
    summary_writer,
)
from envs.data import DATASETS, load_splits
from envs.language import AGENTS, apply_mask, draw_masks
from trainers.gumbel import TemperatureSchedule
from trainers.language import (
    ESTIMATORS,
    LEVELS,
    LanguageConfig,
    LanguageTrainer,
    check_speaker,
    default_speaker,
    run_modules,
)
from trainers.probe import fit_linear_probe, map_splits

THESIS = {"none": 64.4, "receive": 65.7, "feedback": 69.4, "both": 71.4}  # Table 4.1, noise 0.1
QUICK = {"steps": 150, "eval_every": 50, "log_every": 25}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.language", description=__doc__.split("\n")[0])
    d = LanguageConfig()
    p.add_argument("--noise", type=float, default=d.noise, help="pixel inversion probability of each mask")
    p.add_argument("--levels", default=",".join(LEVELS), help="comma-separated communication levels")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..n-1 (default 5, 1 with --quick)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--message-length", type=int, default=d.message_length)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--hidden", default=",".join(map(str, d.hidden)), help="speaker hidden widths, e.g. 256,256")
    p.add_argument("--speaker-layer-norm", action="store_true", help="LayerNorm before each ReLU of the speaker")
    p.add_argument("--critic-hidden", type=int, default=d.critic_hidden)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate of speakers and critics")
    p.add_argument("--probe-lr", type=float, default=d.probe_lr)
    p.add_argument("--ce-weight", type=float, default=d.ce_weight, help="communication CE weight, one-way levels")
    p.add_argument("--ce-weight-two-way", type=float, default=d.ce_weight_two_way, help="... at level both")
    t = d.temperature
    p.add_argument("--temperature-start", type=float, default=t.start)
    p.add_argument("--temperature-factor", type=float, default=t.factor)
    p.add_argument("--temperature-every", type=int, default=t.every)
    p.add_argument("--temperature-floor", type=float, default=t.floor)
    p.add_argument("--straight-through", action="store_true", help="hard messages forward, soft gradients")
    p.add_argument("--estimator", default="gumbel", choices=[*ESTIMATORS, "both"], help="speakers' gradients: "
                   "Gumbel-Softmax relaxation, REINFORCE on sampled messages, or both side by side")  # fmt: skip
    p.add_argument("--entropy-weight", type=float, default=d.entropy_weight, help="REINFORCE's entropy bonus")
    p.add_argument("--baseline-decay", type=float, default=d.baseline_decay, help="REINFORCE's running-mean baseline")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--dataset", default="mnist", choices=list(DATASETS))
    p.add_argument("--data-dir", default=None, help="dataset root (default $COMMCHANNELS_DATA, else a cache)")
    p.add_argument("--logdir", default="runs")
    p.add_argument(
        "--out",
        default=None,
        help="results JSON (default results/language.json, results/language-quick.json with --quick)",
    )
    p.add_argument("--agent", default=None, help="speaker class as package.module:ClassName")
    p.add_argument("--reference-epochs", type=int, default=10, help="epochs of the reference probes")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run of every level")
    return p


def make_config(args) -> LanguageConfig:
    quick = QUICK if args.quick else {}
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
        if not hidden or min(hidden) < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--hidden must be positive comma-separated widths, got {args.hidden!r}") from None
    try:
        return LanguageConfig(
            noise=args.noise,
            message_length=args.message_length,
            vocab_size=args.vocab_size,
            hidden=hidden,
            speaker_layer_norm=args.speaker_layer_norm,
            critic_hidden=args.critic_hidden,
            batch_size=args.batch_size,
            steps=quick.get("steps", args.steps),
            lr=args.lr,
            probe_lr=args.probe_lr,
            ce_weight=args.ce_weight,
            ce_weight_two_way=args.ce_weight_two_way,
            temperature=TemperatureSchedule(
                args.temperature_start, args.temperature_factor, args.temperature_every, args.temperature_floor
            ),
            straight_through=args.straight_through,
            entropy_weight=args.entropy_weight,
            baseline_decay=args.baseline_decay,
            eval_every=quick.get("eval_every", args.eval_every),
            log_every=quick.get("log_every", LanguageConfig.log_every),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def references(splits, config: LanguageConfig, seed: int, speaker_cls: type, epochs: int) -> dict[str, float]:
    """Linear probes on the student's raw noisy view and on its untrained speaker's hidden layer."""
    mask = draw_masks(config.noise, splits.train.images.shape[1], seed)[AGENTS.index("student")]
    raw = map_splits(splits, lambda x: apply_mask(x, mask))
    speaker = run_modules(seed, config, splits.train.images.shape[1], speaker_cls)[0]["student"].eval()
    hidden = map_splits(raw, lambda x: speaker(x)[1])
    return {
        "raw_view": fit_linear_probe(raw, epochs, lr=config.probe_lr, seed=seed),
        "untrained_hidden": fit_linear_probe(hidden, epochs, lr=config.probe_lr, seed=seed),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = make_config(args)
    levels = parse_list(args.levels, LEVELS, "level(s)")
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.reference_epochs < 1:
        raise UsageError(f"--reference-epochs must be >= 1, got {args.reference_epochs}")
    try:
        speaker_cls = load_class(args.agent) if args.agent else default_speaker(config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    splits = load_splits(args.dataset, args.data_dir)
    try:
        check_speaker(speaker_cls, config, splits.train.images.shape[1])
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.batch_size > len(splits.train.images):
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {len(splits.train.images)} training images")
    out = Path(args.out or ("results/language-quick.json" if args.quick else "results/language.json"))
    estimators = list(ESTIMATORS) if args.estimator == "both" else [args.estimator]
    tables = {}
    for estimator in estimators:
        suffix = "" if estimator == "gumbel" else f"-{estimator}"
        tables[estimator] = _benchmark(
            args,
            dataclasses.replace(config, estimator=estimator),
            levels,
            splits,
            speaker_cls,
            out.with_name(out.stem + suffix + out.suffix),
            Path(args.logdir) / "language" / f"noise{config.noise:g}{suffix}",
        )
    if len(estimators) > 1:
        print(
            f"\nTable 4.1 by estimator, noise {config.noise:g}: test accuracy (%), mean ± std over {args.seeds} seed(s)"
        )
        rows = [[lv, *(_cell(tables[e]["levels"][lv], args.seeds) for e in estimators), f"{THESIS[lv]:.1f}"]
                for lv in levels]  # fmt: skip
        print(format_table(["level", *estimators, "thesis (Gumbel)"], rows))
    return 0


def _benchmark(args, config: LanguageConfig, levels, splits, speaker_cls, out: Path, run_root: Path) -> dict:
    """Train (or resume, or skip) every pending run of one estimator; report and return its results."""
    identity = {
        **config.to_dict(),
        "dataset": args.dataset,
        "agent": args.agent,
        "reference_epochs": 1 if args.quick else args.reference_epochs,
    }
    results = Results(out, "language", identity)
    data = results.data
    started = time.time()

    runs_done = {(lv, int(k)) for lv, entry in data.get("levels", {}).items() for k in entry.get("runs", {})}
    pending = [(lv, k) for lv in levels for k in range(args.seeds) if (lv, k) not in runs_done]
    ref_done = data.setdefault("references_per_seed", {})
    for k in tqdm(range(args.seeds), desc="reference probes", leave=False):
        if str(k) not in ref_done:
            ref_done[str(k)] = references(splits, config, k, speaker_cls, identity["reference_epochs"])
            results.save()

    if pending:
        _train(config, splits, pending, speaker_cls, run_root, out, results)
    data["wall_time_s"] = data.get("wall_time_s", 0.0) + (time.time() - started)
    _summarise(data, levels, args.seeds)
    results.save()
    _report(data, levels, args.seeds, run_root, out)
    return data


def _cell(entry: dict, seeds: int) -> str:
    return f"{entry['mean']:.1f}" + (f" ± {entry['std']:.1f}" if seeds > 1 else "")


def _train(config, splits, pending, speaker_cls, run_root: Path, out: Path, results: Results) -> None:
    trainer = LanguageTrainer(config, splits, pending, speaker_cls)
    writers = [summary_writer(run_root / level / f"seed{seed}") for level, seed in pending]

    def log(step: int, metrics: dict[str, list[float]]) -> None:
        for tag, values in metrics.items():
            for writer, value in zip(writers, values, strict=True):
                writer.add_scalar(tag, value, step)

    checkpoint = out.with_name(out.name + ".ckpt.pt")
    with tqdm(total=config.steps, desc=f"{len(pending)} runs", unit="step") as bar:
        run_results = trainer.fit(logger=log, checkpoint=checkpoint, progress=bar.update)
    for (level, seed), r, writer in zip(pending, run_results, writers, strict=True):
        entry = results.data.setdefault("levels", {}).setdefault(level, {}).setdefault("runs", {})
        entry[str(seed)] = dataclasses.asdict(r)
        hparams = {
            "level": level,
            "seed": seed,
            **{k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, bool, str))},
        }
        writer.add_hparams(
            hparams,
            {"hparam/test_accuracy": r.test_accuracy, "hparam/best_val_accuracy": r.best_val_accuracy},
            run_name=".",
        )
        writer.close()
    results.save()
    checkpoint.unlink(missing_ok=True)


def _summarise(data: dict, levels: list[str], seeds: int) -> None:
    for level in levels:
        entry = data["levels"][level]
        accuracies = [entry["runs"][str(k)]["test_accuracy"] for k in range(seeds)]
        mean, std = mean_std(accuracies)
        entry.update(test_accuracy=accuracies, mean=mean, std=std, thesis=THESIS[level])
    per_seed = [data["references_per_seed"][str(k)] for k in range(seeds)]
    data["references"] = {name: mean_std([r[name] for r in per_seed])[0] for name in ("raw_view", "untrained_hidden")}


def _report(data: dict, levels: list[str], seeds: int, run_root: Path, out: Path) -> None:
    rows = []
    base = data["levels"].get("none", {}).get("test_accuracy")
    for level in levels:
        e = data["levels"][level]
        gap = ""
        if base and level != "none":
            diffs = [a - b for a, b in zip(e["test_accuracy"], base, strict=True)]
            m, s = mean_std(diffs)
            gap = f"{m:+.1f}" + (f" ± {s / math.sqrt(len(diffs)):.1f}" if seeds > 1 else "")
        rows.append([level, _cell(e, seeds), f"{e['thesis']:.1f}", gap])
    refs = data["references"]
    rows.append(["ref: raw noisy view", f"{refs['raw_view']:.1f}", "-", ""])
    rows.append(["ref: untrained speaker", f"{refs['untrained_hidden']:.1f}", "-", ""])
    print(
        f"\nTable 4.1, noise {data['config']['noise']:g}, {data['config']['estimator']}: student's linear probe, "
        f"test accuracy (%) at best validation, mean ± std over {seeds} seed(s)"
    )
    print(format_table(["level", "ours", "thesis", "vs none (paired, ± s.e.)"], rows))
    curves = {}
    for level in levels:
        runs = [data["levels"][level]["runs"][str(k)] for k in range(seeds)]
        curves[level] = (runs[0]["steps"], [r["val_accuracy"] for r in runs])
    png = run_root / "val_accuracy.png"
    plot_curves(
        png,
        curves,
        "training step",
        "validation accuracy (%)",
        f"Student's linear probe, noise {data['config']['noise']:g}",
    )
    print(
        f"\nresults: {out}   curves: {png}   TensorBoard: tensorboard --logdir {run_root}   "
        f"wall time: {data['wall_time_s']:.0f} s"
    )


if __name__ == "__main__":
    run_cli(main)
