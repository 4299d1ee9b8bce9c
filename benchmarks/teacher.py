"""Reproduce the thesis' Table 3.1 and Figure 3.1: ``python -m benchmarks.teacher``.

A frozen teacher (trained once per seed, cached) picks the hardest samples of the student's stack of
minibatches. Every (config, seed) student trains as one batched model until 20 epochs without
validation gain. The table gives test accuracy at best validation and the backward passes to reach the
baseline's test accuracy, beside the thesis, with forward passes counted too.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from benchmarks.cli import ArgumentParser, UsageError, add_common, finite_float, variants
from benchmarks.harness import (
    Progress,
    Sink,
    device_of,
    flat_hparams,
    format_counts,
    format_table,
    parse_ints,
    parse_list,
    plot_panels,
    plot_sweep,
    run_cli,
)
from benchmarks.store import Store, format_summary, mean_std, prefix, preflight
from envs.data import DATASETS, load_splits
from envs.teacher_student import MEASURES, TARGETS
from trainers.probe import accuracy
from trainers.teacher import QUICK_TEACHER, TeacherConfig, load_or_train_teachers, predict
from trainers.teacher_policy import POLICIES, PolicyConfig, ppo_scorer, register, train_ppo, train_reinforce
from trainers.teacher_student import Selection, StudentConfig, StudentResult, StudentTrainer, per_step_counters

# Table 3.1: (stack size, measure, target) -> (test accuracy %, backward passes to the baseline's accuracy)
THESIS = {
    Selection(): (96.4, 39_000),
    Selection(2, "cross_entropy", "soft"): (96.9, 25_000),
    Selection(2, "cross_entropy", "true"): (96.5, 18_700),
    Selection(2, "euclidean", "soft"): (96.8, 18_700),
    Selection(2, "random", "soft"): (96.7, 32_800),
    Selection(5, "cross_entropy", "soft"): (96.8, 13_700),
    Selection(5, "cross_entropy", "true"): (96.8, 9_100),
}
QUICK = {"max_epochs": 2, "patience": 1, "eval_every": 200, "seeds": 1, "policy_episodes": 2, "policy_steps": 50,
         **{f"teacher_{k}": getattr(QUICK_TEACHER, k) for k in ("hidden", "max_epochs", "patience")}}  # fmt: skip


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.teacher", description=__doc__.split("\n")[0])
    p.config(StudentConfig, exclude=("dropout",))
    p.config(TeacherConfig, prefix="teacher-")
    p.config(PolicyConfig, prefix="policy-", exclude=("batch_size",))  # the policies send the student's batch
    p.option("--stack-sizes", None, "comma-separated stack sizes (with --measures/--targets: the baseline plus every "
             "combination)", default_text="the thesis' seven configs")  # fmt: skip
    p.option("--measures", None, f"difficulty measures from {','.join(MEASURES)}", default_text="all")
    p.option("--targets", None, f"targets from {','.join(TARGETS)}", default_text="all")
    p.option("--teacher-cache", "checkpoints/teachers", "folder of the trained teachers (one file per seed)")
    p.option("--retrain-teacher", False, "ignore cached teachers and train new ones", action="store_true")
    p.option("--dataset", "mnist", "dataset", choices=list(DATASETS))
    p.option("--data-dir", None, "dataset root", default_text="$COMMCHANNELS_DATA, else a per-user cache")
    p.option("--target-accuracy", None, "test accuracy (%%) whose first crossing is counted (changing it retrains "
             "nothing)", default_text="the baseline's mean", type=finite_float)  # fmt: skip
    p.option("--policies", None, "learned teachers to compare with the CE heuristic and random selection at the "
             f"policies' stack size: comma-separated from {','.join(POLICIES)}", default_text="none")  # fmt: skip
    p.fixed = {"stack-sizes", "measures", "targets", "policies", "dataset", "target-accuracy", "teacher-cache",
               "retrain-teacher"}  # fmt: skip
    add_common(p, out="results/teacher[-policies][-quick].json", quick="3 (1 with --quick)|every config, one "
               "seed, 2 epochs, a small teacher")  # fmt: skip
    return p


def selections(args, policy: PolicyConfig | None = None) -> list[Selection]:
    """The thesis' configs, the policy comparison, or the baseline plus every combination of the given flags."""
    if policy is not None:
        size, target = policy.stack_size, policy.target
        learned = [Selection(size, f"learned_{p}", target) for p in parse_list(args.policies, POLICIES, "policy")]
        return [Selection(), Selection(size, "cross_entropy", target), Selection(size, "random", target), *learned]
    if args.stack_sizes is None and args.measures is None and args.targets is None:
        return list(THESIS)
    sizes = parse_ints(args.stack_sizes, "--stack-sizes") if args.stack_sizes else [2, 5]
    measures = parse_list(args.measures, MEASURES, "measure(s)") if args.measures else list(MEASURES)
    targets = parse_list(args.targets, TARGETS, "target(s)") if args.targets else list(TARGETS)
    chosen = [Selection(s, m, t) for s in sizes for m in measures for t in targets]
    return [Selection(), *[c for c in chosen if c != Selection()]]


def selection_of(name: str) -> Selection:
    """The selection a cell name stands for (``baseline``, ``stack5-cross_entropy-soft``...)."""
    if name == "baseline":
        return Selection()
    match = re.fullmatch(r"stack(\d+)-(.+)-(\w+)", name)
    if match is None:
        raise UsageError(f"cannot resume the unfinished run of cell {name!r}; delete the checkpoint to restart")
    return Selection(int(match[1]), match[2], match[3])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    seeds = args.seeds if args.seeds is not None else 3
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 100:
        raise UsageError(f"--target-accuracy is a percentage in (0, 100], got {args.target_accuracy}")
    device = device_of(args)
    chosen = [_variant(parser, label, v) for label, v in variants(parser, args)]
    splits = load_splits(args.dataset, args.data_dir)
    n = len(splits.train.images)
    for _, _, configs, student_config, teacher_config, _ in chosen:
        largest = max(c.stack_size for c in configs) * student_config.batch_size
        if largest > n or teacher_config.batch_size > n:
            raise UsageError(f"a stack of {largest} samples (batch size x stack size) or a teacher batch of "
                             f"{teacher_config.batch_size} does not fit in the {n} training images")  # fmt: skip
    _, _, _, student_config, teacher_config, policy = chosen[0]
    name = "teacher" + ("-policies" if policy else "") + ("-quick" if args.quick else "")
    out = Path(args.out or f"results/{name}.json")
    root = Path(args.logdir) / out.stem
    preflight([(Path(args.teacher_cache), "--teacher-cache"), (Path(args.logdir), "--logdir")])
    identity = {**student_config.__dict__, **{f"teacher_{k}": v for k, v in teacher_config.__dict__.items()},
                **{f"policy_{k}": v for k, v in (policy.__dict__ if policy else {}).items()}, "dataset": args.dataset}
    swept = parser.sweep_flag(args.sweep)
    with Store(out, "teacher", identity, swept) as store:
        started = time.time()
        for label, v, configs, student_config, teacher_config, policy in chosen:
            at = prefix(label)
            for job in store.jobs(label, [c.name for c in configs], seeds):
                runs = [(selection_of(cell.rsplit("/", 1)[-1]), k) for cell, k in job]
                teachers = load_or_train_teachers(splits, sorted({k for _, k in runs}), teacher_config,
                                                  Path(args.teacher_cache), args.retrain_teacher,
                                                  Progress("teachers"), device)  # fmt: skip
                for k, m in teachers.items():
                    store.reference(f"{at}teacher_test_accuracy", k, accuracy(m, splits.test).item())
                logits = {k: predict(m, splits.train.images) for k, m in teachers.items()}
                learned = sorted({s.measure.removeprefix("learned_") for s, _ in runs
                                  if s.measure.startswith("learned_")})  # fmt: skip
                if learned:
                    _train_policies(learned, policy, splits, teacher_config, v, store, root / at)
                trainer = StudentTrainer(student_config, splits, runs, logits, device=device)
                hparams = {**flat_hparams(student_config), **flat_hparams(teacher_config, "teacher."),
                           "dataset": args.dataset}  # fmt: skip
                with Sink(store, job, root, hparams, _headline, desc=f"{at}{len(job)} students",
                      device=device) as sink:
                    trainer.fit(sink, store.checkpoint(label))
        store.add_time(time.time() - started)
        for label, _, configs, *_ in chosen:
            at = prefix(label)
            _summarise(store, at, configs, seeds, args.target_accuracy)
            _report(store, at, configs, seeds, root)
        store.save()
        if swept:
            _sweep_report(store, swept, chosen[0][2], seeds, root)
        print(f"\nresults: {store.path}   figures: {root}   TensorBoard: tensorboard --logdir {root}   "
              f"wall time: {store.data['wall_time_s']:.0f} s")  # fmt: skip
    return 0


def _variant(parser: ArgumentParser, label: str, v) -> tuple:
    """One variant's (label, flags, selections, student, teacher and policy configs)."""
    policy = parser.build(PolicyConfig, v, "policy_", batch_size=v.batch_size) if v.policies else None
    if policy is not None:
        for name in parse_list(v.policies, POLICIES, "policy"):
            register(name, _unfit)  # a placeholder until the policy is trained, so the selections validate
    student, teacher = parser.build(StudentConfig, v), parser.build(TeacherConfig, v, "teacher_")
    return label, v, selections(v, policy), student, teacher, policy


def _sweep_report(store: Store, swept, configs: list[Selection], seeds: int, root: Path) -> None:
    """Each selection's test accuracy against the swept value."""
    name, _, values = swept
    texts = [t for t, _ in values]
    lines = {c.name: [[store.runs(f"{name}={t}/{c.name}")[k]["test_accuracy"] for k in range(seeds)]
                      for t in texts] for c in configs}  # fmt: skip
    print(f"\nSweep over {name}: student test accuracy (%), mean ± std over {seeds} seed(s)")
    print(format_table([name, *lines], [[t, *(format_summary(lines[c][i], 2) for c in lines)]
                                        for i, t in enumerate(texts)]))  # fmt: skip
    plot_sweep(root / f"sweep_{name}.png", name, texts, lines, "student test accuracy (%)")


def _headline(result: StudentResult) -> dict[str, float]:
    return {"test_accuracy": result.test_accuracy, "best_step": result.best_step}


def _unfit(observed):
    raise RuntimeError("a learned teacher was used before it was trained")


def _train_policies(names: list[str], policy: PolicyConfig, splits, teacher_config, args, store: Store,
                    root: Path) -> None:  # fmt: skip
    """Train each learned teacher once, in the env with seed 0's teacher (its inputs are predictive
    distributions, so one policy serves every student seed), and register it as a measure."""
    teacher = load_or_train_teachers(splits, [0], teacher_config, Path(args.teacher_cache))[0]
    logits = predict(teacher, splits.train.images)
    for name in names:
        started = time.time()
        progress = Progress(f"{name} teacher")
        progress.begin(policy.episodes * policy.steps, 0)
        if name == "reinforce":
            register(name, train_reinforce(splits, logits, policy, seed=0, progress=progress.advance))
        else:
            try:
                register(name, ppo_scorer(train_ppo(splits, logits, policy, seed=0, logdir=root / "policies" / name)))
            except ImportError as e:
                raise UsageError(f"{e.name} is not installed; pip install -e '.[rl]'") from None
        progress.close()
        store.reference("policy_training_s", name, time.time() - started)


def _summarise(store: Store, at: str, configs: list[Selection], seeds: int, target: float | None) -> None:
    """Per cell: what the table shows, and the baseline accuracy and target of the variant (under ``baseline``)."""
    data = store.data
    store.summarise([at + c.name for c in configs], seeds, ["test_accuracy", "best_val_accuracy", "best_step"])
    runs = {c.name: [store.runs(at + c.name)[k] for k in range(seeds)] for c in configs}
    baseline = mean_std([r["test_accuracy"] for r in runs["baseline"]])[0] if "baseline" in runs else None
    target = target if target is not None else baseline
    if "baseline" in runs:
        data["cells"][at + "baseline"].update(baseline_accuracy=baseline, target_accuracy=target)
    for c in configs:
        rs, entry = runs[c.name], data["cells"][at + c.name]
        reach = [_first_reach(c, r, target) for r in rs]
        entry.update(
            test_accuracy=[r["test_accuracy"] for r in rs],
            backward_passes=[x["backward_passes"] if x else None for x in reach],
            forward_passes=[x["student_forward_passes"] if x else None for x in reach],
            teacher_forward_passes=[x["teacher_forward_passes"] if x else None for x in reach],
            backward_passes_to_best=[r["best_step"] for r in rs],
            thesis=dict(zip(("accuracy", "backward_passes"), THESIS.get(c, (None, None)), strict=True)),
        )


def _first_reach(selection: Selection, run: dict, accuracy: float | None) -> dict[str, int] | None:
    """The run's counters when its test accuracy first reached ``accuracy`` (None if never)."""
    fields = StudentResult.__dataclass_fields__
    step = StudentResult(**{k: v for k, v in run.items() if k in fields}).steps_to_reach(accuracy) if accuracy else None
    if step is None:
        return None
    return {k: v * step for k, v in per_step_counters(selection).items()}


def _report(store: Store, at: str, configs: list[Selection], seeds: int, root: Path) -> None:
    data = store.data
    base = data["cells"].get(at + "baseline")
    base_bp = mean_std([v for v in base["backward_passes"] if v is not None])[0] if base else None
    rows = []
    for c in configs:
        e = data["cells"][at + c.name]
        acc_m, acc_s = mean_std(e["test_accuracy"])
        reached = [v for v in e["backward_passes"] if v is not None]
        speedup = f"{base_bp / mean_std(reached)[0]:.1f}x" if base_bp and reached else "-"
        thesis_acc, thesis_bp = e["thesis"]["accuracy"], e["thesis"]["backward_passes"]
        rows.append([
            c.name, f"{acc_m:.2f}" + (f" ± {acc_s:.2f}" if seeds > 1 else ""), thesis_acc or "-",
            format_counts(e["backward_passes"]), f"{thesis_bp:,}" if thesis_bp else "-", speedup,
            *map(format_counts, (e["forward_passes"], e["teacher_forward_passes"], e["backward_passes_to_best"])),
        ])  # fmt: skip
    reached = f"{base['target_accuracy']:.2f}% (baseline: {base['baseline_accuracy']:.2f}%)" if base else "-"
    print(f"\nTable 3.1{', ' + at[:-1] if at else ''}: student test accuracy (%) at best validation, and passes (in "
          f"minibatches of 32) until its test accuracy first reached {reached}; mean ± std over {seeds} seed(s)")
    print(format_table(["config", "test acc", "thesis", "backward to target", "thesis", "speedup",
                        "student fwd", "teacher fwd", "backward to best"], rows))  # fmt: skip
    figure = (
        ("stack of 2 minibatches", lambda c: c.stack_size <= 2),  # thesis Fig. 3.1, left
        ("stack of 5 minibatches", lambda c: c.stack_size in (1, 5) or c == Selection(2, "cross_entropy", "soft")),
    )
    panels = []
    for title, keep in figure:
        curves = {}
        for c in filter(keep, configs):
            rs = [store.runs(at + c.name)[k] for k in range(seeds)]
            longest = max(rs, key=lambda r: len(r["steps"]))
            curves[c.name] = (longest["steps"], [r["val_accuracy"] for r in rs])
        panels.append((title, curves))
    plot_panels(root / at / "figure_3_1.png", panels, "student backward passes", "validation accuracy (%)")
    teachers = data["references"].get(f"{at}teacher_test_accuracy", {})
    if teachers:
        print(f"teachers' test accuracy: {', '.join(f'seed {k}: {v:.2f}%' for k, v in sorted(teachers.items()))}")


if __name__ == "__main__":
    run_cli(main)
