"""Reproduce the thesis' Table 3.1 and Figure 3.1: ``python -m benchmarks.teacher``.

A frozen teacher (trained once per seed, cached) picks the hardest samples of the student's stack of
minibatches. Every (config, seed) student trains as one batched model until 20 epochs without
validation gain. The table gives test accuracy at best validation and the backward passes to reach the
baseline's test accuracy, beside the thesis, with forward passes counted too.
"""

from __future__ import annotations

import dataclasses
import math
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
from benchmarks.store import Store, format_summary, mean_std, prefix, preflight, seed_text
from envs.data import DATASETS, load_splits
from envs.teacher_student import MEASURES, TARGETS
from trainers.probe import accuracy
from trainers.teacher import (
    QUICK_TEACHER,
    TeacherConfig,
    cache_path,
    forward_cost,
    irreducible_losses,
    load_or_train_teachers,
    predict,
    training_cost,
)
from trainers.teacher_policy import POLICIES, PolicyConfig, ppo_scorer, register, train_ppo, train_reinforce
from trainers.teacher_student import (
    Selection,
    StudentConfig,
    StudentResult,
    StudentTrainer,
    forward_inclusive,
    per_step_counters,
    selection_of,
)

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
# Rules beyond the thesis, kept in the default table: the pressure curve of its best rule (stack 5, CE, true),
# annealing, a floor, the teacher as the irreducible-loss model, RHO-LOSS's held-out model, a larger stack
BEYOND = [
    *(Selection(5, "cross_entropy", "true", p) for p in (10, 30, 300)),
    Selection(5, "cross_entropy", "true", 30, anneal=20_000),
    Selection(5, "cross_entropy", "true", 300, floor=0.3),
    Selection(5, "reducible", "true"),
    Selection(5, "reducible_holdout", "true", 30),
    Selection(5, "reducible_holdout", "true", 30, anneal=20_000),
    Selection(10, "cross_entropy", "true", 300),
]
# The learned teachers' rivals beside the thesis' CE rule: Table 3.1's best rules at stack 5 (the floor rule
# reaches the baseline's accuracy on every seed soonest; the teacher-as-IL reducible loss reaches 96.4% soonest)
RIVALS = (Selection(5, "cross_entropy", "true", 300, floor=0.3), Selection(5, "reducible", "true"))
QUICK = {"max_epochs": 2, "patience": 1, "eval_every": 200, "seeds": [0], "policy_episodes": 2, "policy_steps": 50,
         **{f"teacher_{k}": getattr(QUICK_TEACHER, k) for k in ("hidden", "max_epochs", "patience")}}  # fmt: skip


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.teacher", description=__doc__.split("\n")[0])
    p.config(StudentConfig, exclude=("dropout",))
    p.config(TeacherConfig, prefix="teacher-")
    p.config(PolicyConfig, prefix="policy-", exclude=("batch_size",))  # the policies send the student's batch
    p.option("--stack-sizes", None, "comma-separated stack sizes (with --measures/--targets: the baseline plus every "
             "combination)", default_text="the thesis' seven configs and nine rules beyond them")  # fmt: skip
    p.option("--measures", None, f"difficulty measures from {','.join(MEASURES)}", default_text="all")
    p.option("--targets", None, f"targets from {','.join(TARGETS)}", default_text="all")
    p.option("--pressures", None, "comma-separated selection pressures: samples drawn by rank, the hardest "
             "pressure times as likely as the easiest (inf: send the hardest, the thesis' rule)", default_text="inf")
    p.option("--anneal", None, "comma-separated backward passes over which the pressure falls to 1 (uniform); 0: "
             "constant", default_text="0")
    p.option("--floors", None, "comma-separated floors: every stack sample keeps a probability >= floor / stack "
             "samples", default_text="0")  # fmt: skip
    p.option("--teacher-cache", "checkpoints/teachers", "folder of the trained teachers (one file per seed)")
    p.option("--retrain-teacher", False, "ignore cached teachers and train new ones", action="store_true")
    p.option("--dataset", "mnist", "dataset", choices=list(DATASETS))
    p.option("--data-dir", None, "dataset root", default_text="$COMMCHANNELS_DATA, else a per-user cache")
    p.option("--target-accuracy", None, "test accuracy (%%) whose first crossing is counted (changing it retrains "
             "nothing)", default_text="the baseline's mean", type=finite_float)  # fmt: skip
    p.option("--policies", None, "learned teachers to compare with the CE heuristic, Table 3.1's best rules and "
             f"random selection at the policies' stack size: comma-separated from {','.join(POLICIES)}",
             default_text="none")  # fmt: skip
    p.fixed = {"stack-sizes", "measures", "targets", "pressures", "anneal", "floors", "policies", "dataset",
               "target-accuracy", "teacher-cache", "retrain-teacher"}  # fmt: skip
    add_common(p, out="results/teacher[-policies][-quick].json", quick="3 (1 with --quick)|every config, one "
               "seed, 2 epochs, a small teacher")  # fmt: skip
    return p


def selections(args, policy: PolicyConfig | None = None) -> list[Selection]:
    """The thesis' configs and the rules beyond them, the policy comparison (the baseline, the thesis' CE
    rule, ``RIVALS`` and random selection at the policies' stack and target, then the policies), or the
    baseline plus every valid combination of the given flags (annealing and floors only with a finite
    pressure)."""
    if policy is not None:
        size, target = policy.stack_size, policy.target
        learned = [Selection(size, f"learned_{p}", target) for p in parse_list(args.policies, POLICIES, "policy")]
        rivals = [dataclasses.replace(r, stack_size=size, target=target) for r in RIVALS]
        return [Selection(), Selection(size, "cross_entropy", target), *rivals, Selection(size, "random", target),
                *learned]  # fmt: skip
    flags = (args.stack_sizes, args.measures, args.targets, args.pressures, args.anneal, args.floors)
    if all(f is None for f in flags):
        return [*THESIS, *BEYOND]
    sizes = parse_ints(args.stack_sizes, "--stack-sizes") if args.stack_sizes else [2, 5]
    measures = parse_list(args.measures, MEASURES, "measure(s)") if args.measures else list(MEASURES)
    targets = parse_list(args.targets, TARGETS, "target(s)") if args.targets else list(TARGETS)
    pressures = _numbers(args.pressures or "inf", "--pressures", lambda x: x >= 1, ">= 1 (or inf)")
    anneals = [int(x) for x in _numbers(args.anneal or "0", "--anneal", lambda x: x >= 0 and x == int(x),
                                        "whole numbers >= 0")]  # fmt: skip
    floors = _numbers(args.floors or "0", "--floors", lambda x: 0 <= x < 1, "in [0, 1)")
    chosen = [Selection(s, m, t, p, a, f) for s in sizes for m in measures for t in targets for p in pressures
              for a in anneals for f in floors if not (math.isinf(p) and (a or f))]  # fmt: skip
    return [Selection(), *[c for c in chosen if c != Selection()]]


def _numbers(text: str, flag: str, ok, what: str) -> list[float]:
    """Comma-separated numbers (``inf`` allowed), each checked by ``ok``."""
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(ok(v) for v in values) or any(math.isnan(v) for v in values):
        raise UsageError(f"{flag} must be {what}, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    seeds = args.seeds if args.seeds is not None else list(range(3))
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
                runs = [(_selection(cell.rsplit("/", 1)[-1]), k) for cell, k in job]
                teachers = load_or_train_teachers(splits, sorted({k for _, k in runs}), teacher_config,
                                                  Path(args.teacher_cache), args.retrain_teacher,
                                                  Progress("teachers"), device)  # fmt: skip
                pixels = splits.train.images.shape[1]
                for k, m in teachers.items():
                    store.reference(f"{at}teacher_test_accuracy", k, accuracy(m, splits.test).item())
                    cost = training_cost(cache_path(Path(args.teacher_cache), teacher_config, pixels, k))
                    if cost:
                        store.reference(f"{at}teacher_training_passes", k, cost["backward_passes"])
                logits = {k: predict(m, splits.train.images) for k, m in teachers.items()}
                irreducible = None
                if any(MEASURES[s.measure].reads_irreducible for s, _ in runs):
                    irreducible = irreducible_losses(splits, sorted({k for _, k in runs}), Path(args.teacher_cache),
                                                     args.retrain_teacher, Progress("irreducible-loss models"),
                                                     device)  # fmt: skip
                learned = sorted({s.measure.removeprefix("learned_") for s, _ in runs
                                  if s.measure.startswith("learned_")})  # fmt: skip
                if learned:
                    _train_policies(learned, policy, splits, teacher_config, v, store, root / at)
                trainer = StudentTrainer(student_config, splits, runs, logits, irreducible, device=device)
                hparams = {**flat_hparams(student_config), **flat_hparams(teacher_config, "teacher."),
                           "dataset": args.dataset}  # fmt: skip
                with Sink(store, job, root, hparams, _headline, desc=f"{at}{len(job)} students",
                      device=device) as sink:
                    trainer.fit(sink, store.checkpoint(label))
        store.add_time(time.time() - started)
        for label, _, configs, student_config, teacher_config, _ in chosen:
            at = prefix(label)
            _summarise(store, at, configs, seeds, args.target_accuracy)
            _report(store, at, configs, seeds, root, student_config, teacher_config, splits)
        store.save()
        if swept:
            _sweep_report(store, swept, chosen[0][2], seeds, root)
        print(f"\nresults: {store.path}   figures: {root}   TensorBoard: tensorboard --logdir {root}   "
              f"wall time: {store.data['wall_time_s']:.0f} s")  # fmt: skip
    return 0


def _selection(name: str) -> Selection:
    try:
        return selection_of(name)
    except ValueError:
        raise UsageError(f"cannot resume cell {name!r}; delete its checkpoint to restart") from None


def _variant(parser: ArgumentParser, label: str, v) -> tuple:
    """One variant's (label, flags, selections, student, teacher and policy configs)."""
    policy = parser.build(PolicyConfig, v, "policy_", batch_size=v.batch_size) if v.policies else None
    if policy is not None:
        for name in parse_list(v.policies, POLICIES, "policy"):
            register(name, _unfit)  # a placeholder until the policy is trained, so the selections validate
    student, teacher = parser.build(StudentConfig, v), parser.build(TeacherConfig, v, "teacher_")
    return label, v, selections(v, policy), student, teacher, policy


def _sweep_report(store: Store, swept, configs: list[Selection], seeds: list[int], root: Path) -> None:
    """Each selection's test accuracy against the swept value."""
    name, _, values = swept
    texts = [t for t, _ in values]
    lines = {c.name: [[store.runs(f"{name}={t}/{c.name}")[k]["test_accuracy"] for k in seeds]
                      for t in texts] for c in configs}  # fmt: skip
    print(f"\nSweep over {name}: student test accuracy (%), mean ± std over {seed_text(seeds)}")
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
            register(name, train_reinforce(splits, logits, policy, seed=policy.seed, progress=progress.advance))
        else:
            try:
                model = train_ppo(splits, logits, policy, seed=policy.seed, logdir=root / "policies" / name)
                register(name, ppo_scorer(model))
            except ImportError as e:
                raise UsageError(f"{e.name} is not installed; pip install -e '.[rl]'") from None
        progress.close()
        store.reference("policy_training_s", name, time.time() - started)


THESIS_TARGET = 96.4  # the thesis' baseline accuracy (Table 3.1), reported beside the baseline's own
FIGURE_ZOOM = (94.0, 98.0)  # Figure 3.1's validation accuracy range: where the rules part


def _teacher_cost(student: StudentConfig, teacher: TeacherConfig, splits) -> float:
    """One forward pass of the teacher in forward passes of the student (multiply-adds per image)."""
    pixels = splits.train.images.shape[1]
    return forward_cost(pixels, teacher.hidden) / forward_cost(pixels, student.hidden)


def _reach(run: dict, threshold: float, curve: str = "test_accuracy_curve") -> int | None:
    """Backward passes until ``curve`` (test or validation accuracy) first reached ``threshold``."""
    return next((s for s, a in zip(run["steps"], run[curve], strict=True) if a >= threshold), None)


def _counted(passes: list[int | None], runs) -> list[int]:
    """Passes per seed (``runs[k]`` is seed k's run), a seed that never reached counting at its last step."""
    return [v if v is not None else runs[k]["stopped_step"] for k, v in enumerate(passes)]


def _summarise(store: Store, at: str, configs: list[Selection], seeds: list[int], target: float | None) -> None:
    """Per cell: what the table shows, and the baseline accuracy and target of the variant (under ``baseline``).
    Passes are counted to the target (default: the baseline's mean test accuracy) and to the thesis' 96.4%,
    and, to choose rule parameters without the test set, to the baseline's mean best validation accuracy."""
    data = store.data
    store.summarise([at + c.name for c in configs], seeds, ["test_accuracy", "best_val_accuracy", "best_step"])
    runs = {c.name: [store.runs(at + c.name)[k] for k in seeds] for c in configs}
    baseline = mean_std([r["test_accuracy"] for r in runs["baseline"]])[0] if "baseline" in runs else None
    target = target if target is not None else baseline
    if "baseline" in runs:
        val_target = mean_std([r["best_val_accuracy"] for r in runs["baseline"]])[0]
        data["cells"][at + "baseline"].update(baseline_accuracy=baseline, target_accuracy=target,
                                              val_target_accuracy=val_target)  # fmt: skip
    for c in configs:
        rs, entry = runs[c.name], data["cells"][at + c.name]
        per_step = per_step_counters(c)
        reach = {"": target, "_thesis_target": THESIS_TARGET}
        for suffix, threshold in reach.items():
            steps = [_reach(r, threshold) if threshold else None for r in rs]
            counters = [{k: v * n for k, v in per_step.items()} if n is not None else None for n in steps]
            entry.update({
                f"backward_passes{suffix}": steps,
                f"forward_passes{suffix}": [x["student_forward_passes"] if x else None for x in counters],
                f"teacher_forward_passes{suffix}": [x["teacher_forward_passes"] if x else None for x in counters],
                f"forward_inclusive{suffix}": [forward_inclusive(x) if x else None for x in counters],
            })  # fmt: skip
        if "baseline" in runs:
            entry["val_backward_passes"] = [_reach(r, val_target, "val_accuracy") for r in rs]
        entry.update(
            test_accuracy=[r["test_accuracy"] for r in rs],
            backward_passes_to_best=[r["best_step"] for r in rs],
            thesis=dict(zip(("accuracy", "backward_passes"), THESIS.get(c, (None, None)), strict=True)),
        )


def _speedup(base: float | None, values: list) -> str:
    """Baseline over config mean, with how many seeds reached when not all ("-" when none)."""
    reached = [v for v in values if v is not None]
    if not base or not reached:
        return "-"
    return f"{base / mean_std(reached)[0]:.1f}x" + ("" if len(reached) == len(values) else
                                                         f" ({len(reached)}/{len(values)})")  # fmt: skip


def chosen_on_validation(store: Store, at: str, configs: list[Selection]) -> dict[tuple, str]:
    """Per rule family (stack size, measure, target), the parameters (pressure, annealing, floor) whose
    students first reached the baseline's best validation accuracy soonest, on average over seeds (a seed
    that never did counts at its last step): chosen without the test set. ``{family: cell name}``, for the
    families with more than one candidate."""
    cells, best, members = store.data["cells"], {}, {}
    for c in configs:
        members.setdefault((c.stack_size, c.measure, c.target), []).append(c)
    for c in configs:
        if c == Selection() or "val_backward_passes" not in cells[at + c.name]:
            continue
        cost = mean_std(_counted(cells[at + c.name]["val_backward_passes"], store.runs(at + c.name)))[0]
        family = (c.stack_size, c.measure, c.target)
        if family not in best or cost < best[family][0]:
            best[family] = (cost, c.name)
    return {family: name for family, (_, name) in best.items() if len(members[family]) > 1}


def _report(store: Store, at: str, configs: list[Selection], seeds: list[int], root: Path, student: StudentConfig,
            teacher: TeacherConfig, splits) -> None:  # fmt: skip
    data, teacher_cost = store.data, _teacher_cost(student, teacher, splits)
    base = data["cells"].get(at + "baseline")
    base_runs = [store.runs(at + "baseline")[k] for k in seeds] if base else []
    target = base["target_accuracy"] if base else None
    # the baseline's mean passes from the per-seed ones ``_summarise`` found (a miss counts at its last step)
    base_bp, base_bp_thesis = (mean_std(_counted(base[f"backward_passes{key}"], base_runs))[0] if base else None
                               for key in ("", "_thesis_target"))  # fmt: skip
    per_pass = per_step_counters(Selection())
    base_fi = forward_inclusive({k: v * base_bp for k, v in per_pass.items()}) if base_bp else None
    chosen = set(chosen_on_validation(store, at, configs).values())
    rows = []
    for c in configs:
        e = data["cells"][at + c.name]
        acc_m, acc_s = mean_std(e["test_accuracy"])
        thesis_acc, thesis_bp = e["thesis"]["accuracy"], e["thesis"]["backward_passes"]
        in_student_units = [t * teacher_cost if t is not None else None for t in e["teacher_forward_passes"]]
        thesis_target = e["backward_passes_thesis_target"]
        rows.append([
            c.name + (" *" if c.name in chosen else ""), f"{acc_m:.2f}" + (f" ± {acc_s:.2f}" if len(seeds) > 1 else ""),
            thesis_acc or "-", format_counts(e["backward_passes"]), f"{thesis_bp:,}" if thesis_bp else "-",
            _speedup(base_bp, e["backward_passes"]), format_counts(e["forward_inclusive"]),
            _speedup(base_fi, e["forward_inclusive"]), format_counts(in_student_units),
            format_counts(thesis_target), _speedup(base_bp_thesis, thesis_target),
            format_counts(e["backward_passes_to_best"]),
        ])  # fmt: skip
    reached = f"{target:.2f}% (baseline: {base['baseline_accuracy']:.2f}%)" if base else "-"
    print(f"\nTable 3.1{', ' + at[:-1] if at else ''}: student test accuracy (%) at best validation, and passes (in "
          f"minibatches of 32) until its test accuracy first reached {reached}, or the thesis' {THESIS_TARGET}%; "
          f"mean ± std over {seed_text(seeds)}, (k/n): only k seeds reached it")  # fmt: skip
    print(format_table(["config", "test acc", "thesis", "backward to target", "thesis", "speedup",
                        "fwd-inclusive", "speedup", "teacher fwd (student units)", f"backward to {THESIS_TARGET}",
                        "speedup", "backward to best"], rows))  # fmt: skip
    print(f"speedup: the baseline's mean passes (a seed that never reached counts at its last step) over the config's "
          f"mean. fwd-inclusive = student forwards + 2 x backward passes, in student minibatch forwards; one teacher "
          f"forward = {teacher_cost:.1f} student forwards (multiply-adds). * = the rule's parameters chosen on "
          f"validation (first to the baseline's best validation accuracy, {base.get('val_target_accuracy', 0):.2f}%)."
          if base else "")  # fmt: skip
    if base and target:
        _baseline_misses(base["backward_passes"], base_runs, target, base_bp)
    _one_off(data, at, teacher_cost * teacher.batch_size / student.batch_size, teacher.batch_size)
    for key, passes, what in (("", base_bp, "the target"), ("_thesis_target", base_bp_thesis, f"{THESIS_TARGET}%")):
        if passes:
            _pressure_figure(store, at, configs, key, passes, root, what)
    sizes = sorted({c.stack_size for c in configs} - {1})
    panels = []
    for size in sizes:
        curves = {}
        for c in configs:
            if c.stack_size not in (1, size):
                continue
            rs = [store.runs(at + c.name)[k] for k in seeds]
            longest = max(rs, key=lambda r: len(r["steps"]))
            curves[c.name] = (longest["steps"], [r["val_accuracy"] for r in rs])
        panels.append((f"stack of {size} minibatches", curves))
    plot_panels(root / at / "figure_3_1.png", panels or [("baseline", {})], "student backward passes",
                "validation accuracy (%)", zoom=FIGURE_ZOOM)  # fmt: skip
    teachers = data["references"].get(f"{at}teacher_test_accuracy", {})
    if teachers:
        print(f"teachers' test accuracy: {', '.join(f'seed {k}: {v:.2f}%' for k, v in sorted(teachers.items()))}")


def _pressure_figure(store: Store, at: str, configs: list[Selection], key: str, base_bp: float, root: Path,
                     what: str) -> None:  # fmt: skip
    """Speedup to ``what`` (the target, or the thesis' accuracy: ``backward_passes<key>``) against the
    (finite) selection pressure, a line per rule run at every one, and the same rule sending the hardest
    (pressure inf) as a dashed reference; per seed: the baseline's mean passes over the seed's, a seed
    that never reached counting at its last step."""
    pressures = sorted({c.pressure for c in configs if c != Selection() and math.isfinite(c.pressure)})
    lines: dict[str, dict[float, list[float]]] = {}
    for c in configs:
        if c == Selection():
            continue
        runs, passes = store.runs(at + c.name), store.data["cells"][at + c.name][f"backward_passes{key}"]
        per_seed = [base_bp / v for v in _counted(passes, runs)]
        rule = dataclasses.replace(c, pressure=math.inf, anneal=0, floor=0.0).name
        rule += (f" anneal {c.anneal}" if c.anneal else "") + (f" floor {c.floor:g}" if c.floor else "")
        lines.setdefault(rule, {})[c.pressure] = per_seed
    sampled = {k: [v[p] for p in pressures] for k, v in lines.items() if all(p in v for p in pressures)}
    hardest = {f"{k} (hardest)": [v[math.inf]] * len(pressures) for k, v in lines.items() if k in sampled
               and math.inf in v}  # fmt: skip
    if len(pressures) > 1 and sampled:
        plot_sweep(root / at / f"speedup_vs_pressure{key}.png", "selection pressure", [f"{p:g}" for p in pressures],
                   sampled, f"speedup to {what}", references=hardest)  # fmt: skip


def _baseline_misses(passes: list[int | None], runs: list[dict], target: float, base_bp: float) -> None:
    """Say so when a baseline seed never reached the target: counted at its last step (the speedup's
    definition), it raises the baseline's mean and every speedup by the same factor, printed here."""
    reached = [p for p in passes if p is not None]
    if not reached or len(reached) == len(passes):
        return
    per_seed = ", ".join(f"{p:,}" if p is not None else f"never (stopped at {r['stopped_step']:,})"
                         for p, r in zip(passes, runs, strict=True))  # fmt: skip
    own = mean_std(reached)[0]
    print(f"the baseline itself reached {target:.2f}% on {len(reached)}/{len(passes)} seeds ({per_seed}): over only "
          f"the seeds that reached, its mean is {own:,.0f} passes, and both speedups to the target above are "
          f"{base_bp / own:.2f}x lower")  # fmt: skip


def _one_off(data: dict, at: str, batch_cost: float, batch_size: int) -> None:
    """The teacher's one-off training cost, in student minibatch forwards (``batch_cost``: one forward of a
    teacher minibatch of ``batch_size`` images in those units), and where its logits come from."""
    passes = data["references"].get(f"{at}teacher_training_passes", {})
    if passes:
        cost = [3 * p * batch_cost for p in passes.values()]
        print(f"one-off: training the teacher cost {format_counts(cost)} student forwards "
              f"({format_counts(list(passes.values()))} backward passes of {batch_size} images, forward + 2 x "
              "backward); its logits on the training set are computed once (one forward per image), not per stack "
              "as the teacher fwd column counts")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
