"""Reproduce the thesis' Table 4.1: ``python -m benchmarks.language --noise 0.1``; find where talking
helps: ``python -m benchmarks.language --preset channel``.

Trains every (communication level, seed) run as one batched model, prints test accuracy of the
student's linear probe (at its best validation accuracy) beside the thesis, with two reference rows
measured in the same run, then what the messages say (``trainers.language.analysis``, on each run's
best weights), writes ``--out`` atomically, TensorBoard runs under
``<logdir>/<out name>/<level>/seed<k>`` and a PNG of the validation curves beside them, and keeps
each run's best-validation weights in ``<out name>.weights/``. A re-run of the same command skips
finished runs and resumes unfinished ones from a checkpoint.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from agents.loading import load_class
from benchmarks.cli import ArgumentParser, UsageError, add_common, add_data, add_preset, variants
from benchmarks.harness import (
    Sink,
    check_memory,
    device_of,
    flat_hparams,
    format_table,
    parse_list,
    plot_curves,
    plot_sweep,
    run_cli,
)
from benchmarks.launch import Task, add_launcher, launch, plan, prepare
from benchmarks.protocol import paired_difference
from benchmarks.store import Store, format_summary, mean_std, prefix, preflight, seed_text, summary
from envs.data import DATASETS, Split, Splits, load_splits
from envs.language import AGENTS, split_views
from trainers.language.analysis import analyse
from trainers.language.config import ESTIMATORS, LEVELS, THESIS_LEVELS, LanguageConfig
from trainers.language.speaker_check import check_speaker
from trainers.language.trainer import STUDENT, TEACHER, LanguageTrainer, default_speaker, run_modules
from trainers.probe import fit_linear_probes, map_splits

THESIS = {"none": 64.4, "receive": 65.7, "feedback": 69.4, "both": 71.4}  # Table 4.1, noise 0.1
QUICK = {"steps": 150, "eval_every": 50, "log_every": 25, "seeds": [0], "reference_epochs": 1}
# reference rows: what the student learns alone, and upper bounds on what a channel could add
REFERENCES = {"raw_view": "ref: probe on the raw view (alone)", "untrained_hidden": "ref: untrained speaker (alone)",
              "full_image": "upper: probe on the full clean image",
              "both_features": "upper: both agents' untrained features"}
ALONE = ("raw_view", "untrained_hidden")  # the best the student reaches alone: the larger of these, per seed
# Chosen on validation with tuning seed 0 (docs: "When does talking help"): of the rows visible 0.3-0.6, 0.4 gave
# the largest mean validation gain of receive, feedback and both over none; explicit flags win.
PRESETS = {"channel": {"view": "occlude", "overlap": "rows", "visible": 0.4, "ce_weight": 0.03,
                       "ce_weight_two_way": 0.015}}
INVERTIBLE = ("the inversion view x' = x + m(1 - 2x) is an invertible map of the image, so each agent's own view "
              "already holds all the class information the other's does: talking can only regularise (try "
              "--preset channel, or --view occlude|resample)")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.language", description=__doc__.split("\n")[0])
    p.config(LanguageConfig, exclude=("estimator",))
    p.option("--estimator", "gumbel", "speakers' gradients: Gumbel-Softmax relaxation, REINFORCE on sampled "
             "messages, or both (a sweep over the two)", choices=[*ESTIMATORS, "both"])
    p.option("--levels", None, "comma-separated communication levels", default_text=f"{','.join(THESIS_LEVELS)}, "
             "and read, decide with --view occlude|resample")
    with p.group("data"):
        add_data(p, "mnist", "dataset of the views", choices=list(DATASETS))
    p.option("--agent", None, "speaker class as package.module:ClassName", default_text="the thesis' speaker")
    p.option("--reference-epochs", 30, "epochs of the reference and analysis probes (1 with --quick)", type=int)
    p.option("--analysis", True, "analyse every run's messages (trainers.language.analysis)",
             action=argparse.BooleanOptionalAction)
    add_preset(p, PRESETS, "a setting where talking helps")
    p.fixed = {"levels", "dataset"}
    add_launcher(p)
    add_common(p, out="results/language[-<preset>][-reinforce|-both][-quick].json",
               quick="5 (1 with --quick)|every level, one seed, 150 steps")
    return p


def references(splits, config: LanguageConfig, seeds: list[int], speaker_cls: type, epochs: int) -> list[dict]:
    """Per seed, linear probes on the student's raw view and on its untrained speaker's hidden layer (what it
    has alone), on the full clean image and on both agents' untrained hidden layers together (what a perfect
    channel could pass on); a resample view's noise is drawn once per split here, fixed as at evaluation.
    All seeds' probes of one kind train together."""
    view, pixels = config.partial_view(), splits.train.images.shape[1]
    features: dict[str, list[Splits]] = {name: [] for name in REFERENCES}
    for seed in seeds:
        seen = split_views(splits, view.masks(pixels, seed), view, seed)
        speakers = run_modules(seed, config, pixels, speaker_cls)[0]
        hidden = {a: map_splits(seen[a], lambda x, s=speakers[a]: s.eval()(x)[1]) for a in AGENTS}
        pairs = zip(hidden[TEACHER].named().values(), hidden[STUDENT].named().values(), strict=True)
        features["raw_view"].append(seen[STUDENT])
        features["untrained_hidden"].append(hidden[STUDENT])
        features["full_image"].append(splits)
        features["both_features"].append(Splits(*(Split(torch.cat([t.images, s.images], -1), s.labels)
                                                  for t, s in pairs)))
    values = {name: fit_linear_probes(f, seeds, epochs, lr=config.probe_lr) for name, f in features.items()}
    return [{name: v[i] for name, v in values.items()} for i in range(len(seeds))]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    if args.estimator == "both":
        if args.sweep:
            raise UsageError("--estimator both is a sweep over the estimators; drop it or --sweep")
        args.sweep = "estimator=gumbel,reinforce"
    swept = parser.sweep_flag(args.sweep)
    views = {args.view, *(value for _, value in swept[2])} if swept and swept[0] == "view" else {args.view}
    default_levels = [*THESIS_LEVELS, *(["read", "decide"] if views - {"invert"} else [])]
    levels = parse_list(args.levels, LEVELS, "level(s)") if args.levels else default_levels
    seeds = args.seeds if args.seeds is not None else list(range(5))
    device = device_of(args)
    prepare(args)
    splits = load_splits(args.dataset, args.data_dir)
    chosen = []
    for label, v in variants(parser, args):
        config = parser.build(LanguageConfig, v, estimator=v.estimator)
        try:
            speaker_cls = load_class(v.agent) if v.agent else default_speaker(config)
            check_speaker(speaker_cls, config.message_length, config.vocab_size, splits.train.images.shape[1])
        except ValueError as e:
            raise UsageError(str(e)) from None
        if config.batch_size > len(splits.train.images):
            raise UsageError(f"--batch-size {config.batch_size} exceeds the {len(splits.train.images)} training images")
        if v.reference_epochs < 1:
            raise UsageError(f"--reference-epochs must be >= 1, got {v.reference_epochs}")
        chosen.append((label, config, speaker_cls, v))
    suffix = f"-{args.preset}" if args.preset else ""
    suffix += {"gumbel": ""}.get(args.estimator, f"-{args.estimator}") + ("-quick" if args.quick else "")
    out = Path(args.out or f"results/language{suffix}.json")
    identity = {**chosen[0][1].to_dict(), "dataset": args.dataset, "agent": args.agent,
                "reference_epochs": args.reference_epochs}
    root = Path(args.logdir) / out.stem
    preflight([(root, "--logdir")])
    with Store(out, "language", identity, swept) as store:
        tasks = [task for label, config, speaker_cls, v in chosen
                 for task in _benchmark(store, label, config, speaker_cls, levels, seeds, splits, v, device, root)]
        launch(store, tasks, args)
        for label, config, speaker_cls, v in chosen:
            _references(store, prefix(label), config, seeds, splits, speaker_cls, v.reference_epochs)  # where missing
            if v.analysis:
                _analyse(store, label, config, speaker_cls, levels, seeds, splits, v.reference_epochs)
        _report(store, chosen, levels, seeds, root, swept, args.analysis)
    return 0


def _benchmark(store, label, config, speaker_cls, levels, seeds, splits, args, device, root) -> list[Task]:
    """Reference probes, then every pending (level, seed) run of one variant: trained here, in as few jobs as
    resume allows (``--launcher local``), or returned as tasks for the cluster."""
    at = prefix(label)
    pending = [(level, k) for level in levels for k in seeds if not store.done(at + level, k)]
    if pending:  # before the reference probes, which train for every pending seed at once
        check_memory(lambda: LanguageTrainer(config, splits, pending[:1], speaker_cls, device=device), len(pending),
                     device, f"{len({lv for lv, _ in pending})} levels x {len({k for _, k in pending})} seeds")
    hparams = {**flat_hparams(config), "dataset": args.dataset, "agent": args.agent or "thesis"}
    train = functools.partial(_train, config, root, hparams, device, label or "language")
    if args.launcher != "local":  # a task reads the data, imports the speaker, probes and analyses its own runs
        analysis = args.reference_epochs if args.analysis else None
        return plan(store, label, levels, seeds, args.runs_per_task, lambda runs: functools.partial(
            _task, config, train, (args.dataset, args.data_dir), args.agent, at, args.reference_epochs, analysis,
            runs))
    _references(store, at, config, seeds, splits, speaker_cls, args.reference_epochs)
    for job in store.jobs(label, levels, seeds):
        train(splits, speaker_cls, job, store, store.checkpoint(label))
    return []


def _references(store, at: str, config, seeds, splits, speaker_cls, epochs: int) -> None:
    """The reference probes of the seeds that lack them, recorded under ``at``."""
    missing = [k for k in seeds
               if any(str(k) not in store.data["references"].get(at + name, {}) for name in REFERENCES)]
    if missing:
        store.lacks(f"the reference probes of seed(s) {', '.join(map(str, missing))}")
        values_of = references(splits, config, missing, speaker_cls, epochs)
        for k, values in zip(missing, values_of, strict=True):
            for name, value in values.items():
                store.reference(at + name, k, value)


def _task(config, train, data: tuple[str, str | None], agent: str | None, at: str, reference_epochs: int,
          analysis_epochs: int | None, runs, collector, checkpoint: Path) -> None:
    """A cluster task: its seeds' reference probes, its runs, then what their messages say (each run's analysis in
    its record), all handed back to the driver through ``collector``."""
    splits = load_splits(*data)
    speaker_cls = load_class(agent) if agent else default_speaker(config)
    _references(collector, at, config, sorted({k for _, k in runs}), splits, speaker_cls, reference_epochs)
    train(splits, speaker_cls, runs, collector, checkpoint)
    if analysis_epochs is None:
        return
    for k in sorted({k for _, k in runs}):
        mine = [(i, cell) for i, (cell, seed, _, _) in enumerate(collector.runs) if seed == k]
        weights = [collector.runs[i][3] for i, _ in mine]
        results = _analysis_of(config, speaker_cls, splits, k, weights, analysis_epochs)
        for (i, _), result in zip(mine, results, strict=True):
            collector.runs[i][2]["analysis"] = result


def _train(config, root: Path, hparams: dict, device, desc: str, splits: Splits, speaker_cls: type,
           runs: Sequence[tuple[str, int]], store, checkpoint: Path) -> None:
    """Train ``runs`` (``(cell, seed)``) as one batched model, each finished run handed to ``store.add`` (the results
    store here, a task's ``Collector`` on a cluster)."""
    trainer = LanguageTrainer(config, splits, [(cell.rsplit("/", 1)[-1], k) for cell, k in runs], speaker_cls,
                              device=device)
    with Sink(store, runs, root, hparams, _headline, desc=f"{desc}: {len(runs)} runs", device=device) as sink:
        trainer.fit(sink, checkpoint)


def _analyse(store, label, config, speaker_cls, levels, seeds, splits, epochs) -> None:
    """Analyse the messages of every finished run that has no analysis yet, from its saved best weights;
    the runs of one seed at once (their probes train together: as fast per probe as larger batches
    here, and a fifth of the memory of all 20 runs of Table 4.1 at once)."""
    at = prefix(label)
    for k in seeds:
        pending = [level for level in levels if "analysis" not in store.runs(at + level)[k]]
        if not pending:
            continue
        store.lacks(f"the language analysis of seed {k} ({', '.join(pending)})")
        weights = []
        for level in pending:
            file = store.path.parent / store.runs(at + level)[k]["weights"]
            if not file.is_file():
                raise UsageError(f"the weights of {at + level} seed {k} are missing ({file}); run with --no-analysis")
            weights.append(torch.load(file, weights_only=True))
        print(f"{label or 'language'}: analysing the messages of seed {k} ({len(weights)} runs)", flush=True)
        for level, result in zip(pending, _analysis_of(config, speaker_cls, splits, k, weights, epochs), strict=True):
            store.annotate(at + level, k, "analysis", result)


def _analysis_of(config, speaker_cls, splits, seed: int, weights: list[dict], epochs: int) -> list[dict]:
    """What the messages of seed ``seed``'s runs say, from each run's best weights (their probes train together)."""
    pixels, view = splits.train.images.shape[1], config.partial_view()
    seen, runs = split_views(splits, view.masks(pixels, seed), view, seed), []
    for state in weights:
        speakers = run_modules(seed, config, pixels, speaker_cls)[0]
        for a, speaker in speakers.items():
            name = f"speaker_{a}."
            speaker.load_state_dict({n[len(name) :]: w for n, w in state.items() if n.startswith(name)})
        runs.append((speakers, seen, seed))
    return analyse(runs, splits.test.images, (config.message_length, config.vocab_size), epochs, config.probe_lr)


def _headline(result) -> dict[str, float]:
    return {"test_accuracy": result.test_accuracy, "best_val_accuracy": result.best_val_accuracy}


ANALYSIS = {  # column: (analysis key, digits); the message columns are the teacher's (the student receives them)
    "msg probe": ("teacher_message_probe", 1),
    "I(msg;class) >=": ("teacher_message_bits", 2),
    "distinct": ("teacher_distinct", 3),
    "bit H": ("teacher_bit_entropy", 2),
    "topsim": ("teacher_topsim_view", 2),
    "topsim (image)": ("teacher_topsim", 2),
    "features": ("feature_probe", 1),
    "+ msg": ("joint_probe", 1),
    "gain": ("message_gain", 1),
    "+ other msg": ("joint_probe_other_message", 1),
    "drop": ("intervention_drop", 1),
    "agree": ("agreement", 2),
}


def _report(store: Store, chosen, levels: list[str], seeds: list[int], root: Path, swept, analysis: bool) -> None:
    data = store.data
    for label, config, *_ in chosen:
        at = prefix(label)
        cells = [at + lv for lv in levels]
        store.summarise(cells, seeds, ["test_accuracy", "best_val_accuracy"])
        accuracy = {lv: [store.runs(at + lv)[k]["test_accuracy"] for k in seeds] for lv in levels}
        refs = {name: [data["references"][at + name][str(k)] for k in seeds] for name in REFERENCES}
        alone = [max(values) for values in zip(*(refs[name] for name in ALONE), strict=True)]
        rows = []
        for level in levels:
            against = {"none": accuracy.get("none") if level != "none" else None, "alone": alone,
                       **{c: accuracy.get(c) if level == "decide" else None for c in ("read", "both")}}
            paired = {name: paired_difference(accuracy[level], c) for name, c in against.items() if c}
            store.data["cells"][at + level]["summary"]["paired"] = {n: asdict(v) for n, v in paired.items()}
            rows.append([level, format_summary(accuracy[level]), f"{THESIS[level]:.1f}" if level in THESIS else "-",
                         *(paired[name].format() if name in paired else "" for name in against)])
        for name, text in REFERENCES.items():
            rows.append([text, format_summary(refs[name]), "-", "", "", "", ""])
        print(f"\nTable 4.1, {label + ', ' if label else ''}{config.partial_view()}, {config.estimator}: student's "
              f"linear probe, test accuracy (%) at best validation, mean ± std over {seed_text(seeds)}")
        print(format_table(["level", "ours", "thesis", "vs none", "vs alone", "vs read", "vs both"], rows))
        print("vs X: paired difference with the same seed, mean [95% t-interval]. alone: the larger of the two 'alone' "
              "references per seed, the best the student reaches without a channel (online probe here; the analysis "
              "below has the converged one). decide - read: what training the channel adds to reading it; decide - "
              "both: what reading the message adds to the same training.")
        if config.view == "invert":
            print(f"why the levels sit close: {INVERTIBLE}")
        if analysis:
            _analysis_table(store, at, levels, seeds, alone)
        curves = {}
        for level in levels:
            runs = [store.runs(at + level)[k] for k in seeds]
            curves[level] = (runs[0]["steps"], [r["val_accuracy"] for r in runs])
        plot_curves(root / at / "val_accuracy.png", curves, "training step", "validation accuracy (%)",
                    f"Student's linear probe, {label or config.partial_view()}")
    if swept:
        name, _, values = swept
        texts = [t for t, _ in values]
        lines = {lv: [[store.runs(f"{name}={t}/{lv}")[k]["test_accuracy"] for k in seeds] for t in texts]
                 for lv in levels}
        refs = {text: [[data["references"][f"{name}={t}/{ref}"][str(k)] for k in seeds] for t in texts]
                for ref, text in REFERENCES.items()}
        print(f"\nSweep over {name}: test accuracy (%), mean ± std over {seed_text(seeds)}")
        columns = {**lines, **refs}
        print(format_table([name, *columns], [[t, *(format_summary(v[i]) for v in columns.values())]
                                              for i, t in enumerate(texts)]))
        plot_sweep(root / f"sweep_{name}.png", name, texts, lines, "test accuracy (%)", references=refs)
    print(f"\nresults: {store.path}   curves: {root}   TensorBoard: tensorboard --logdir {root}")


def _gap(values: list[float], control: list[float] | None) -> str:
    """``values - control`` paired by seed, mean [95% interval]; empty without a control."""
    return paired_difference(values, control).format() if control else ""


def _analysis_table(store: Store, at: str, levels: list[str], seeds: list[int], alone: list[float]) -> None:
    """What the messages say, per level: means over seeds (± std for the message probe and the drop), and the
    converged probe of what the level decides with against ``alone`` (per seed); the summaries are saved in
    each cell's ``summary["analysis"]``."""
    rows = []
    for level in levels:
        runs = [store.runs(at + level)[k]["analysis"] for k in seeds]
        values = {key: [r[key] for r in runs] for key in runs[0]}
        store.data["cells"][at + level]["summary"]["analysis"] = {key: summary(v) for key, v in values.items()}
        row = [level]
        for key, digits in ANALYSIS.values():
            spread = key in ("teacher_message_probe", "message_gain", "intervention_drop") and len(seeds) > 1
            row.append(format_summary(values[key], digits) if spread else f"{mean_std(values[key])[0]:.{digits}f}")
        decision = values["joint_probe" if LEVELS[level].decides else "feature_probe"]
        rows.append([*row, _gap(decision, alone)])
    store.save()
    print("What the messages say (test set, best-validation weights): the teacher's messages, then the student's "
          "offline probes on its features, on [features, received message] and with another image's message")
    print(format_table(["level", *ANALYSIS, "vs alone (converged)"], rows))
    print("gain = (+ msg) - features: what the message adds to the student's own features. drop = (+ msg) - "
          "(+ other msg): how much a reader trained on both relies on it, the channel's causal effect on its "
          "decision. Only read and decide decide with the message: at the thesis' levels both are what a reader "
          "could do, not what the level does. topsim: against the speaker's own view; (image): against the clean "
          "image. vs alone (converged): the converged probe of what the level decides with (+ msg at read and "
          "decide, features elsewhere) against the best alone reference, paired, mean [95% t-interval].")


if __name__ == "__main__":
    run_cli(main)
