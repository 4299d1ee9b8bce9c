"""Reproduce the thesis' Table 3.1 and Figure 3.1: ``python -m benchmarks.teacher``.

A frozen teacher (trained once per seed, cached) picks the hardest samples of the student's stack of
minibatches. Every (config, seed) student trains as one batched model until 20 epochs without
validation gain. The table gives test accuracy at best validation and the backward passes to reach the
baseline's test accuracy, beside the thesis, with forward passes counted too.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.harness import (
    ArgumentParser,
    Results,
    UsageError,
    format_counts,
    format_table,
    mean_std,
    parse_ints,
    parse_list,
    plot_panels,
    run_cli,
    summary_writer,
)
from envs.data import DATASETS, load_splits
from envs.teacher_student import MEASURES, TARGETS
from trainers.probe import accuracy
from trainers.teacher import TeacherConfig, load_or_train_teachers, predict
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
QUICK_STUDENT = {"max_epochs": 2, "patience": 1, "eval_every": 200}
QUICK_TEACHER = TeacherConfig(hidden=(256, 256), max_epochs=1, patience=1)
QUICK_POLICY = {"episodes": 2, "episode_steps": 50}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.teacher", description=__doc__.split("\n")[0])
    d, t = StudentConfig(), TeacherConfig()
    p.add_argument("--stack-sizes", default=None, help="comma-separated stack sizes (with the flags below, "
                   "configs are the baseline plus every combination; default: the thesis' seven configs)")  # fmt: skip
    p.add_argument("--measures", default=None, help=f"difficulty measures from {','.join(MEASURES)}")
    p.add_argument("--targets", default=None, help=f"targets from {','.join(TARGETS)}")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..n-1 (default 3, 1 with --quick)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--temperature", type=float, default=d.temperature, help="of the teacher's soft labels")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without validation gain")
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="backward passes between evaluations")
    p.add_argument("--teacher-batch-size", type=int, default=t.batch_size)
    p.add_argument("--teacher-dropout", type=float, default=t.dropout)
    p.add_argument("--teacher-patience", type=int, default=t.patience)
    p.add_argument("--teacher-cache", default="checkpoints/teachers")
    p.add_argument("--retrain-teacher", action="store_true", help="ignore cached teachers and train new ones")
    p.add_argument("--dataset", default="mnist", choices=list(DATASETS))
    p.add_argument("--data-dir", default=None, help="dataset root (default $COMMCHANNELS_DATA, else a cache)")
    p.add_argument("--logdir", default="runs")
    p.add_argument("--out", default=None, help="results JSON (default results/teacher.json, "
                   "results/teacher-quick.json with --quick)")  # fmt: skip
    p.add_argument("--target-accuracy", type=float, default=None, help="test accuracy (%%) whose first "
                   "crossing is counted (default: the baseline's mean; changing it retrains nothing)")  # fmt: skip
    p.add_argument("--policies", default=None, help=f"learned teachers to compare with the CE heuristic and random "
                   f"selection at the policies' stack size: comma-separated from {','.join(POLICIES)}")  # fmt: skip
    q = PolicyConfig()
    p.add_argument("--policy-episodes", type=int, default=q.episodes, help="fresh students a policy trains on")
    p.add_argument("--policy-steps", type=int, default=q.episode_steps, help="student updates per episode")
    p.add_argument("--policy-stack-size", type=int, default=q.stack_size)
    p.add_argument("--policy-target", default=q.target, choices=list(TARGETS))
    p.add_argument("--policy-lr", type=float, default=q.lr)
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run of every config")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    policy = None
    if args.policies is not None:
        try:
            policy = PolicyConfig(**{"episodes": args.policy_episodes, "episode_steps": args.policy_steps,
                                     "stack_size": args.policy_stack_size, "target": args.policy_target,
                                     "lr": args.policy_lr, "batch_size": args.batch_size,
                                     **(QUICK_POLICY if args.quick else {})})  # fmt: skip
        except ValueError as e:
            raise UsageError(str(e)) from None
        for name in parse_list(args.policies, POLICIES, "policy"):
            register(name, _unfit)  # a placeholder until the policy is trained, so the selections validate
    configs = selections(args, policy)
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 100:
        raise UsageError(f"--target-accuracy is a percentage in (0, 100], got {args.target_accuracy}")
    try:
        chosen = {"batch_size": args.batch_size, "lr": args.lr, "temperature": args.temperature,
                  "patience": args.patience, "max_epochs": args.max_epochs, "eval_every": args.eval_every}  # fmt: skip
        student_config = StudentConfig(**{**chosen, **(QUICK_STUDENT if args.quick else {})})
        teacher_config = QUICK_TEACHER if args.quick else TeacherConfig(
            batch_size=args.teacher_batch_size, dropout=args.teacher_dropout, patience=args.teacher_patience
        )  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None
    splits = load_splits(args.dataset, args.data_dir)
    n = len(splits.train.images)
    largest = max(c.stack_size for c in configs) * student_config.batch_size
    if largest > n or teacher_config.batch_size > n:
        raise UsageError(f"a stack of {largest} samples (batch size x stack size) or a teacher batch of "
                         f"{teacher_config.batch_size} does not fit in the {n} training images")  # fmt: skip

    name = "teacher" + ("-policies" if policy else "") + ("-quick" if args.quick else "")
    out = Path(args.out or f"results/{name}.json")
    identity = {"student": dataclasses.asdict(student_config), "teacher": dataclasses.asdict(teacher_config),
                "dataset": args.dataset, **({"policy": dataclasses.asdict(policy)} if policy else {})}  # fmt: skip
    results = Results(out, "teacher", identity)
    data = results.data
    started = time.time()
    done = {(name, int(k)) for name, e in data.get("configs", {}).items() for k in e.get("runs", {})}
    pending = [(c, k) for c in configs for k in range(seeds) if (c.name, k) not in done]
    if pending:
        bar = tqdm(desc="teachers", leave=False, total=0)
        teachers = load_or_train_teachers(
            splits,
            sorted({k for _, k in pending}),
            teacher_config,
            Path(args.teacher_cache),
            args.retrain_teacher,
            bar.set_postfix_str,
        )
        bar.close()
        logits = {k: predict(m, splits.train.images) for k, m in teachers.items()}
        for k, m in teachers.items():
            data.setdefault("teacher_test_accuracy", {})[str(k)] = accuracy(m, splits.test).item()
        learned = sorted({c.measure.removeprefix("learned_") for c, _ in pending if c.measure.startswith("learned_")})
        if learned:
            _train_policies(learned, policy, splits, teacher_config, args, data)
        _train(student_config, splits, pending, logits, Path(args.logdir), results)
    data["wall_time_s"] = data.get("wall_time_s", 0.0) + time.time() - started
    _summarise(data, configs, seeds, args.target_accuracy)
    results.save()
    _report(data, configs, seeds, Path(args.logdir), out)
    return 0


def _unfit(observed):
    raise RuntimeError("a learned teacher was used before it was trained")


def _train_policies(names: list[str], policy: PolicyConfig, splits, teacher_config, args, data: dict) -> None:
    """Train each learned teacher once, in the env with seed 0's teacher (its inputs are predictive
    distributions, so one policy serves every student seed), and register it as a measure."""
    teacher = load_or_train_teachers(splits, [0], teacher_config, Path(args.teacher_cache))[0]
    logits = predict(teacher, splits.train.images)
    for name in names:
        started = time.time()
        steps = policy.episodes * policy.episode_steps
        with tqdm(total=steps, desc=f"{name} teacher", unit="step", leave=False) as bar:
            if name == "reinforce":
                register(name, train_reinforce(splits, logits, policy, seed=0, progress=bar.update))
            else:
                logdir = Path(args.logdir) / "teacher" / "policies" / name
                try:
                    register(name, ppo_scorer(train_ppo(splits, logits, policy, seed=0, logdir=logdir)))
                except ImportError as e:
                    raise UsageError(f"{e.name} is not installed; pip install -e '.[rl]'") from None
        data.setdefault("policy_training_s", {})[name] = time.time() - started


def _train(config: StudentConfig, splits, pending, logits, logdir: Path, results: Results) -> None:
    trainer = StudentTrainer(config, splits, pending, logits)
    writers = [summary_writer(logdir / "teacher" / c.name / f"seed{k}") for c, k in pending]

    def log(step: int, metrics: dict[str, dict[int, float]]) -> None:
        for tag, values in metrics.items():
            for r, value in values.items():
                writers[r].add_scalar(tag, value, step)  # step = the student's backward passes

    def finished(i: int, r) -> None:  # saved at once: a killed benchmark keeps every finished student
        (c, k), writer = pending[i], writers[i]
        entry = results.data.setdefault("configs", {}).setdefault(c.name, {"selection": dataclasses.asdict(c)})
        entry.setdefault("runs", {})[str(k)] = dataclasses.asdict(r)
        results.save()
        writer.add_hparams({"config": c.name, "seed": k, **dataclasses.asdict(c)},
                           {"hparam/test_accuracy": r.test_accuracy, "hparam/best_step": r.best_step},
                           run_name=".")  # fmt: skip
        writer.close()

    limit = config.max_epochs * (len(splits.train.images) // config.batch_size)
    with tqdm(total=limit, desc=f"{len(pending)} students", unit="step") as bar:
        trainer.fit(progress=bar.update, logger=log, on_finish=finished)


def _summarise(data: dict, configs: list[Selection], seeds: int, target: float | None) -> None:
    runs = {c.name: [data["configs"][c.name]["runs"][str(k)] for k in range(seeds)] for c in configs}
    baseline = mean_std([r["test_accuracy"] for r in runs["baseline"]])[0] if "baseline" in runs else None
    data["baseline_accuracy"] = baseline
    data["target_accuracy"] = baseline = target if target is not None else baseline
    for c in configs:
        rs, entry = runs[c.name], data["configs"][c.name]
        reach = [_first_reach(c, r, baseline) for r in rs]
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
    step = StudentResult(**run).steps_to_reach(accuracy) if accuracy is not None else None
    if step is None:
        return None
    return {k: v * step for k, v in per_step_counters(selection).items()}


def _report(data: dict, configs: list[Selection], seeds: int, logdir: Path, out: Path) -> None:
    base = data["configs"].get("baseline")
    base_bp = mean_std([v for v in base["backward_passes"] if v is not None])[0] if base else None
    rows = []
    for c in configs:
        e = data["configs"][c.name]
        acc_m, acc_s = mean_std(e["test_accuracy"])
        reached = [v for v in e["backward_passes"] if v is not None]
        speedup = f"{base_bp / mean_std(reached)[0]:.1f}x" if base_bp and reached else "-"
        thesis_acc, thesis_bp = e["thesis"]["accuracy"], e["thesis"]["backward_passes"]
        rows.append([
            c.name, f"{acc_m:.2f}" + (f" ± {acc_s:.2f}" if seeds > 1 else ""), thesis_acc or "-",
            format_counts(e["backward_passes"]), f"{thesis_bp:,}" if thesis_bp else "-", speedup,
            *map(format_counts, (e["forward_passes"], e["teacher_forward_passes"], e["backward_passes_to_best"])),
        ])  # fmt: skip
    print(
        f"\nTable 3.1: student test accuracy (%) at best validation, and passes (in minibatches of 32) until its "
        f"test accuracy first reached {data['target_accuracy']:.2f}% (baseline: {data['baseline_accuracy']:.2f}%); "
        f"mean ± std over {seeds} seed(s)"
    )
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
            rs = [data["configs"][c.name]["runs"][str(k)] for k in range(seeds)]
            longest = max(rs, key=lambda r: len(r["steps"]))
            curves[c.name] = (longest["steps"], [r["val_accuracy"] for r in rs])
        panels.append((title, curves))
    png = logdir / "teacher" / "figure_3_1.png"
    plot_panels(png, panels, "student backward passes", "validation accuracy (%)")
    teachers = data.get("teacher_test_accuracy", {})
    if teachers:
        print(f"teachers' test accuracy: {', '.join(f'seed {k}: {v:.2f}%' for k, v in sorted(teachers.items()))}")
    print(
        f"\nresults: {out}   figure: {png}   TensorBoard: tensorboard --logdir {logdir / 'teacher'}   "
        f"wall time: {data['wall_time_s']:.0f} s"
    )


if __name__ == "__main__":
    run_cli(main)
