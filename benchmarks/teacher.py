"""Reproduce the thesis' Table 3.1 and Figure 3.1: ``python -m benchmarks.teacher``.

A frozen teacher (trained once per seed, cached) picks the hardest samples of the student's stack of
minibatches. Every (config, seed) student trains as one batched model until 20 epochs without
validation gain. The table gives test accuracy at best validation and the backward passes to reach the
baseline's test accuracy, beside the thesis, with forward passes counted too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import torch

from agents.teacher_student import CLASSIFIERS
from benchmarks.cli import (
    ArgumentParser,
    UsageError,
    add_common,
    add_data,
    add_preset,
    finite_float,
    int_tuple,
    seed_list,
    split_items,
    variants,
)
from benchmarks.harness import (
    Progress,
    Sink,
    check_memory,
    device_of,
    flat_hparams,
    parse_ints,
    parse_list,
    run_cli,
)
from benchmarks.launch import add_launcher, launch, plan, prepare
from benchmarks.store import Store, prefix, preflight
from benchmarks.teacher_report import THESIS, report, summarise, sweep_report
from envs.data import DATASETS, Split, Splits, load_splits
from envs.noise import corrupt_labels
from envs.selection import MEASURES, OWN_LOSS, TARGETS
from envs.teacher_student import REWARDS
from trainers.probe import accuracy
from trainers.teacher_student.policy import (
    POLICIES,
    PolicyConfig,
    load_scorer,
    ppo_scorer,
    register,
    save_policy,
    train_ppo,
    train_reinforce,
)
from trainers.teacher_student.student import (
    SCHEDULES,
    Selection,
    StudentConfig,
    StudentResult,
    StudentTrainer,
    image_shape,
)
from trainers.teacher_student.teachers import (
    IRREDUCIBLE,
    QUICK_TEACHER,
    TeacherConfig,
    cache_path,
    carve_holdout,
    irreducible_config,
    irreducible_losses,
    irreducible_models,
    irreducible_training_cost,
    load_or_train_teachers,
    predict,
    training_cost,
)

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
# Settings added after results files were first written, at the value every older run had: left out of a file's
# identity there, so a file written before them still resumes
ADDED = {"model": "mlp", "optimizer": "adam", "weight_decay": 0.0, "teacher_model": "mlp",
         "policy_observe_labels": False, "irreducible_hidden": IRREDUCIBLE.hidden, "irreducible_model": "mlp"}

# Two papers' settings as they state them (docs/teacher.md compares them side by side with ours). Loshchilov & Hutter
# (2016), as their reference code runs them: the student (their MNIST CNN, ``lh-cnn``) ranks its own latest known
# losses over the whole training set (their 50,000 images: no holdout), batch 64, AdaDelta and Adam, 50 epochs;
# selection pressures 1e2 and 1e8, each constant or falling to 1 over the 50 epochs (39,062 passes of 64), losses
# recomputed never or after every 100,000 samples sent (1,563 passes): their scenarios 3-10. RHO-LOSS (Mindermann et
# al. 2022, its reference code): the top 10% of a 320-sample candidate batch (stack 10 of 32) by reducible loss,
# beside its train-loss and irreducible-loss baselines and uniform training, AdamW (1e-3, weight decay 0.01), its
# MNIST MLP 784-512-512-512-10 for the student and the irreducible-loss model, which trains on half the training
# split (its CIFAR-10 holdout is half the training set).
PRESETS = {
    "loshchilov-hutter": {"stack_sizes": "all", "measures": "own_loss", "targets": "true", "pressures": "100,1e8",
                          "anneal": "0,39062", "refresh": "0,1563", "batch_size": 64, "model": "lh-cnn",
                          "max_epochs": 50, "holdout": 0, "sweep": "optimizer=adam,adadelta", "eval_every": 391},
    "rho-loss": {"stack_sizes": "10", "measures": "reducible_holdout,loss,irreducible", "targets": "true",
                 "batch_size": 32, "hidden": (512, 512, 512), "irreducible_hidden": (512, 512, 512),
                 "weight_decay": 0.01, "holdout": 25_000},
}
QUICK = {"max_epochs": 2, "patience": 1, "eval_every": 200, "seeds": [0], "policy_episodes": 2, "policy_steps": 50,
         **{f"teacher_{k}": getattr(QUICK_TEACHER, k) for k in ("hidden", "max_epochs", "patience")}}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.teacher", description=__doc__.split("\n")[0])
    p.config(StudentConfig, exclude=("dropout",))
    p.config(TeacherConfig, prefix="teacher-")
    # the policies send the student's batch; their seed and reward are candidates, chosen on validation
    policies = {"policies": None}  # the policy flags are read only with --policies
    p.config(PolicyConfig, prefix="policy-", exclude=("batch_size", "seed", "reward"), read_with=policies)
    p.option("--stack-sizes", None, "comma-separated stack sizes (with --measures/--targets: the baseline plus every "
             f"combination); all: the whole training set, ranked by {' or '.join(OWN_LOSS)} (Loshchilov & Hutter)",
             default_text="the thesis' seven configs, baseline-cosine and nine rules beyond them")
    p.option("--measures", None, f"difficulty measures from {','.join(MEASURES)}", default_text="all")
    p.option("--targets", None, f"targets from {','.join(TARGETS)}", default_text="all")
    p.option("--pressures", None, "comma-separated selection pressures: samples drawn by rank, the hardest "
             "pressure times as likely as the easiest (inf: send the hardest, the thesis' rule)", default_text="inf")
    p.option("--anneal", None, "comma-separated backward passes over which the pressure falls to 1 (uniform); 0: "
             "constant", default_text="0")
    p.option("--floors", None, "comma-separated floors: every stack sample keeps a probability >= floor / stack "
             "samples", default_text="0")
    p.option("--refresh", None, "comma-separated backward passes between recomputations of every training image's "
             f"loss, for {' and '.join(OWN_LOSS)} (0: a loss is as old as the sample's last visit)", default_text="0")
    p.option("--teacher-cache", "checkpoints/teachers", "folder of the trained teachers (one file per seed)")
    p.option("--retrain-teacher", False, "ignore cached teachers and train new ones", action="store_true")
    with p.group("data"):
        add_data(p, "mnist", choices=list(DATASETS))
        p.option("--label-noise", None, "fraction of the training labels (the holdout's too) replaced by another "
                 "class, drawn from --label-noise-seed: the same corruption for every row and seed; validation and "
                 "test stay clean; the teachers and the irreducible-loss model train on it", default_text="none",
                 type=finite_float)
        p.option("--label-noise-seed", None, "seed of the corruption (which labels, which wrong classes)",
                 default_text="0", type=int, read_with={"label_noise": None})
    p.option("--target-accuracy", None, "validation accuracy (%%) whose first sustained crossing is counted "
             "(changing it retrains nothing)", default_text="the highest the baseline holds on every seed",
             type=finite_float)
    p.option("--lr-schedule", None, "comma-separated student learning-rate schedules from "
             f"{','.join(SCHEDULES)} (decayed to 0 over max-epochs): each combination once per schedule",
             default_text="constant; the default table adds baseline-cosine")
    p.option("--holdout", None, "training images set apart (the last ones) for the irreducible-loss model and the "
             "learned teachers' reward; every row trains on the rest", type=int,
             default_text="a tenth of the training split: 5,000 on MNIST")
    p.option("--irreducible-model", "mlp", "the irreducible-loss model: an MLP of --irreducible-hidden widths, or one "
             "of the student's CNNs (RHO-LOSS's CIFAR-10 model is the student's architecture)", choices=CLASSIFIERS)
    p.option("--irreducible-hidden", IRREDUCIBLE.hidden, "hidden widths of the irreducible-loss model's MLP "
             "(RHO-LOSS's MNIST model: 512,512,512)", type=int_tuple)
    p.option("--tuning-seeds", None, "seeds (a subset of --seeds) on whose validation curves the * rows are chosen; "
             "the table reports the others", default_text="none: chosen on the reported seeds, said so",
             type=seed_list)
    p.option("--policies", None, "learned teachers to compare with the CE heuristic, Table 3.1's best rules and "
             f"random selection at the policies' stack size: comma-separated from {','.join(POLICIES)}",
             default_text="none")
    p.option("--policy-seeds", [0], "the learned teachers' training seeds (initial weights, draws, episodes' "
             "students), written as --seeds: each seed and reward trains one candidate policy, and the * row is "
             "chosen on validation of --tuning-seeds", default_text="0", type=seed_list,
             read_with=policies)
    p.option("--policy-rewards", "advantage", f"comma-separated env rewards from {','.join(REWARDS)}: the "
             "validation-loss drop, or its advantage over an update on a random minibatch of the same stack from "
             "the same state", read_with=policies)
    p.fixed = {"stack-sizes", "measures", "targets", "pressures", "anneal", "floors", "refresh", "policies", "dataset",
               "target-accuracy", "teacher-cache", "retrain-teacher", "lr-schedule", "holdout", "tuning-seeds",
               "policy-seeds", "policy-rewards", "irreducible-hidden"}
    add_preset(p, PRESETS, "a paper's setting")
    add_launcher(p)
    add_common(p, out="results/teacher[-<preset>][-policies][-quick].json", quick="3 (1 with --quick)|every config, "
               "one seed, 2 epochs, a small teacher")
    return p


def selections(args, policy: PolicyConfig | None = None) -> list[Selection]:
    """The thesis' configs and the rules beyond them, the policy comparison (the baseline, the thesis' CE
    rule, ``RIVALS`` and random selection at the policies' stack and target, then the policies), or the
    baseline plus every valid combination of the given flags (annealing and floors only with a finite
    pressure; random selection only at pressure inf, the same uniform draw)."""
    if policy is not None:
        size, target = policy.stack_size, policy.target
        learned = [Selection(size, f"learned_{name}", target) for name in candidates(args)]
        rivals = [dataclasses.replace(r, stack_size=size, target=target) for r in RIVALS]
        return [Selection(), Selection(size, "cross_entropy", target), *rivals, Selection(size, "random", target),
                *learned]
    flags = (args.stack_sizes, args.measures, args.targets, args.pressures, args.anneal, args.floors,
             args.lr_schedule, args.refresh)
    if all(f is None for f in flags):
        return [*THESIS, Selection(lr_schedule="cosine"), *BEYOND]
    sizes = [2, 5]
    if args.stack_sizes:
        items = split_items(args.stack_sizes, "--stack-sizes")
        whole = [0] if "all" in items else []
        sizes = whole + (parse_ints(",".join(i for i in items if i != "all"), "--stack-sizes") if len(items) > len(
            whole) else [])
    measures = parse_list(args.measures, MEASURES, "measure(s)") if args.measures else list(MEASURES)
    targets = parse_list(args.targets, TARGETS, "target(s)") if args.targets else list(TARGETS)
    pressures = _numbers(args.pressures or "inf", "--pressures", lambda x: x >= 1, ">= 1 (or inf)")
    anneals = [int(x) for x in _numbers(args.anneal or "0", "--anneal", lambda x: x >= 0 and x == int(x),
                                        "whole numbers >= 0")]
    floors = _numbers(args.floors or "0", "--floors", lambda x: 0 <= x < 1, "in [0, 1)")
    refreshes = [int(x) for x in _numbers(args.refresh or "0", "--refresh", lambda x: x >= 0 and x == int(x),
                                          "whole numbers >= 0")]
    schedules = parse_list(args.lr_schedule, SCHEDULES, "learning-rate schedule(s)") if args.lr_schedule else [
        "constant"]
    chosen = [Selection(s, m, t, p, a, f, lr, r) for s in sizes for m in measures for t in targets for p in pressures
              for a in anneals for f in floors for lr in schedules for r in refreshes
              if not (math.isinf(p) and (a or f)) and (m in OWN_LOSS or not (r or s == 0))
              and not (m == "random" and not math.isinf(p))]  # ranked uniform scores send a uniform draw: one row
    if not chosen:
        raise UsageError(f"no selection fits these flags: stack size all and --refresh go with --measures "
                         f"{' or '.join(OWN_LOSS)}, random with --pressures inf")
    baselines = [Selection(lr_schedule=lr) for lr in dict.fromkeys(["constant", *schedules])]
    return [*baselines, *[c for c in chosen if c not in baselines]]


def candidates(args) -> dict[str, tuple[str, str, int]]:
    """The learned teachers to train: ``{<policy>_<reward>_s<seed>: (policy, reward, seed)}``, every policy
    with every reward and seed (``learned_<name>`` is its measure)."""
    kinds = parse_list(args.policies, POLICIES, "policy")
    rewards = parse_list(args.policy_rewards, REWARDS, "--policy-rewards")
    return {f"{k}_{r}_s{s}": (k, r, s) for k in kinds for r in rewards for s in args.policy_seeds}


def _numbers(text: str, flag: str, ok, what: str) -> list[float]:
    """Comma-separated numbers (``inf`` allowed), each checked by ``ok``."""
    items = split_items(text, flag)
    try:
        values = sorted({float(x) for x in items})
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(ok(v) for v in values) or any(math.isnan(v) for v in values):
        raise UsageError(f"{flag} must be {what}, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    seeds = args.seeds if args.seeds is not None else list(range(3))
    tuning = args.tuning_seeds or []
    if set(tuning) - set(seeds) or (tuning and len(tuning) == len(seeds)):
        raise UsageError(f"--tuning-seeds {','.join(map(str, tuning))} must be some, not all, of --seeds "
                         f"{','.join(map(str, seeds))}")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 100:
        raise UsageError(f"--target-accuracy is a percentage in (0, 100], got {args.target_accuracy}")
    device = device_of(args)
    prepare(args)
    chosen = [_variant(parser, label, v) for label, v in variants(parser, args)]
    if args.holdout is not None and args.holdout < 0:
        raise UsageError(f"--holdout must be >= 0 training images, got {args.holdout}")
    whole = load_splits(args.dataset, args.data_dir)
    holdout_size = args.holdout if args.holdout is not None else len(whole.train.images) // 10
    data = {label: _data(whole, holdout_size, v.label_noise, v.label_noise_seed) for label, v, *_ in chosen}
    n = len(next(iter(data.values()))[0].train.images)
    for _, _, configs, student_config, teacher_config, policy in chosen:
        if any(MEASURES[c.measure].reads_irreducible for c in configs) and holdout_size < 2:
            raise UsageError(f"reducible_holdout trains its model on the --holdout images: give >= 2, not "
                             f"{holdout_size}")
        if policy and holdout_size < policy.reward_samples:
            raise UsageError(f"the learned teachers' reward reads {policy.reward_samples} --holdout images; "
                             f"give --holdout >= {policy.reward_samples} or fewer --policy-reward-samples")
        largest = max(c.stack_size for c in configs) * student_config.batch_size
        if largest > n or teacher_config.batch_size > n:
            raise UsageError(f"a stack of {largest} samples (batch size x stack size) or a teacher batch of "
                             f"{teacher_config.batch_size} does not fit in the {n} training images")
    _, _, _, student_config, teacher_config, policy = chosen[0]
    name = "teacher" + (f"-{args.preset}" if args.preset else "") + ("-policies" if policy else "") + (
        "-quick" if args.quick else "")
    out = Path(args.out or f"results/{name}.json")
    root = Path(args.logdir) / out.stem
    preflight([(Path(args.teacher_cache), "--teacher-cache"), (Path(args.logdir), "--logdir")])
    identity = _identity(args, student_config, teacher_config, policy, holdout_size)
    swept = parser.sweep_flag(args.sweep)
    with Store(out, "teacher", identity, swept) as store:
        tasks = []
        for label, v, configs, student_config, teacher_config, policy in chosen:
            at = prefix(label)
            splits, holdout, corrupted = data[label]
            cells = {c.name: dataclasses.asdict(c) for c in configs}
            specs = {at + cell: spec for cell, spec in cells.items()}
            hparams = {**flat_hparams(student_config), **flat_hparams(teacher_config, "teacher."),
                       "dataset": args.dataset}
            irreducible = irreducible_config(args.irreducible_model, args.irreducible_hidden)
            train = functools.partial(_train, student_config, teacher_config, Path(args.teacher_cache), irreducible,
                                      root, hparams, device, f"{at}students")
            if args.launcher != "local":  # the driver trains what tasks share; a task reads the data itself
                pending = [(Selection(**spec), k) for cell, spec in specs.items() for k in seeds
                           if not store.done(cell, k)]
                shared = store.path.with_name(f"{store.path.name}.tasks") / "policies" / (label or "runs")
                policies = _shared(store, at, pending, splits, holdout, teacher_config, v, policy, root, device,
                                   shared)
                source = (args.dataset, args.data_dir, holdout_size, v.label_noise, v.label_noise_seed)
                tasks += plan(store, label, list(cells), seeds, v.runs_per_task,
                              lambda runs, p=policies, t=train, s=source, c=specs: functools.partial(t, s, c, p, runs))
                continue
            for job in store.jobs(label, list(cells), seeds, specs=cells):
                one = lambda c=student_config, d=splits: StudentTrainer(c, d, [(Selection(), seeds[0])], device=device)  # noqa: E731
                cells, ks = {c for c, _ in job}, {k for _, k in job}
                check_memory(one, len(job), device, f"{len(cells)} cells x {len(ks)} seeds")
                runs = [(Selection(**store.specs[cell]), k) for cell, k in job]
                _shared(store, at, runs, splits, holdout, teacher_config, v, policy, root, device)
                train((splits, holdout, corrupted), store.specs, None, job, store, store.checkpoint(label))
        launch(store, tasks, args)
        for label, v, configs, student_config, teacher_config, _ in chosen:
            at = prefix(label)
            recorded = store.data["references"].get(f"{at}irreducible_test_accuracy", {})
            if not store.read_only and any(str(k) not in recorded for k in seeds) and any(
                    m.reads_irreducible for c in configs if (m := MEASURES.get(c.measure))):
                _irreducible(store, at, seeds, *data[label][:2], v, device)  # a file from before it was recorded
            summarise(store, at, configs, seeds, tuning, args.target_accuracy, n // student_config.batch_size)
            report(store, at, configs, seeds, tuning, root, student_config, teacher_config,
                   image_shape(data[label][0]), n, v.label_noise)
        store.save()
        if swept:
            sweep_report(store, swept, chosen[0][2], seeds, tuning, root)
        print(f"\nresults: {store.path}   figures: {root}   TensorBoard: tensorboard --logdir {root}")
    return 0


def _variant(parser: ArgumentParser, label: str, v) -> tuple:
    """One variant's (label, flags, selections, student, teacher and policy configs)."""
    policy = parser.build(PolicyConfig, v, "policy_", batch_size=v.batch_size) if v.policies else None
    if policy is not None:
        for name in candidates(v):
            register(name, _unfit)  # a placeholder until the policy is trained, so the selections validate
    student, teacher = parser.build(StudentConfig, v), parser.build(TeacherConfig, v, "teacher_")
    return label, v, selections(v, policy), student, teacher, policy


def _identity(args, student: StudentConfig, teacher: TeacherConfig, policy: PolicyConfig | None,
              holdout_size: int) -> dict:
    """What makes a results file's runs comparable (``Store``): the configs, the data and its corruption; a setting
    of ``ADDED`` at the value every older run had is left out, so files written before it still resume."""
    identity = {**student.__dict__, **{f"teacher_{k}": v for k, v in teacher.__dict__.items()},
                **{f"policy_{k}": v for k, v in (policy.__dict__ if policy else {}).items()
                   if k not in ("seed", "reward")}, "dataset": args.dataset, "holdout": holdout_size,
                "label_noise": args.label_noise, "label_noise_seed": args.label_noise_seed,
                "irreducible_hidden": args.irreducible_hidden, "irreducible_model": args.irreducible_model}
    return {k: v for k, v in identity.items() if ADDED.get(k, ...) != v}


def _data(whole: Splits, holdout_size: int, noise: float | None, noise_seed: int | None
          ) -> tuple[Splits, Split, torch.Tensor]:
    """A variant's training pool, holdout and mask of corrupted pool labels: ``--label-noise`` corrupts the whole
    training split (the holdout is part of it, as in practice), then the holdout is carved."""
    noisy, corrupted = whole.train, torch.zeros(len(whole.train.labels), dtype=torch.bool)
    if noise is not None:
        try:
            noisy, corrupted = corrupt_labels(whole.train, noise, noise_seed or 0, int(whole.train.labels.max()) + 1)
        except ValueError as e:
            raise UsageError(f"--label-noise: {e}") from None
    try:
        splits, holdout = carve_holdout(dataclasses.replace(whole, train=noisy), holdout_size)
    except ValueError as e:
        raise UsageError(f"--holdout: {e}") from None
    return splits, holdout, corrupted[: len(splits.train.labels)]


def _irreducible(store: Store, at: str, seeds: list[int], splits: Splits, holdout: Split, args, device,
                 retrain: bool = False) -> None:
    """The irreducible-loss models of ``seeds``, trained where missing, with their test accuracy and training cost
    recorded beside the table (a file written before the accuracy was recorded gets it when next read)."""
    cache, config = Path(args.teacher_cache), irreducible_config(args.irreducible_model, args.irreducible_hidden)
    models = irreducible_models(splits, holdout, seeds, cache, config, retrain, Progress("irreducible-loss models"),
                                device)
    for k in seeds:
        store.reference(f"{at}irreducible_test_accuracy", k, accuracy(models[k], splits.test).item())
        cost = irreducible_training_cost(cache, holdout, k, config)[1]
        if cost:
            store.reference(f"{at}irreducible_training_images", k, cost["backward_passes"] * cost["batch_size"])


def _shared(store: Store, at: str, runs: list[tuple[Selection, int]], splits: Splits, holdout: Split,
            teacher_config: TeacherConfig, args, policy: PolicyConfig | None, root: Path, device,
            saved: Path | None = None) -> dict[str, str]:
    """What ``runs`` share, made here once: the teachers of the seeds whose rows use one, the irreducible-loss
    models where a row reads them (their test accuracy and training cost recorded), and the learned teachers
    (registered here; with ``saved``, also written there for tasks to load: ``{name: file}``)."""
    cache, seeds = Path(args.teacher_cache), sorted({k for _, k in runs})
    used = sorted({k for s, k in runs if s.uses_teacher})  # no teacher trains for rows that ignore it
    teachers = load_or_train_teachers(splits, used, teacher_config, cache, args.retrain_teacher,
                                      Progress("teachers"), device) if used else {}
    for k, m in teachers.items():
        store.reference(f"{at}teacher_test_accuracy", k, accuracy(m, splits.test).item())
        cost = training_cost(cache_path(cache, teacher_config, splits.train, k))
        if cost:
            store.reference(f"{at}teacher_training_images", k, cost["backward_passes"] * cost["batch_size"])
    if any(MEASURES[s.measure].reads_irreducible for s, _ in runs):
        _irreducible(store, at, seeds, splits, holdout, args, device, args.retrain_teacher)
    learned = sorted({s.measure.removeprefix("learned_") for s, _ in runs if s.measure.startswith("learned_")})
    if not learned:
        return {}
    return _train_policies(learned, policy, dataclasses.replace(splits, val=holdout), teacher_config, args, store,
                           root / at, saved)


def _train(student: StudentConfig, teacher: TeacherConfig, cache: Path, irreducible_model: TeacherConfig,
           root: Path, hparams: dict, device, desc: str, data: tuple, specs: dict[str, dict],
           policies: dict[str, str] | None, runs: list[tuple[str, int]], store, checkpoint: Path) -> None:
    """Train ``runs`` (``(cell, seed)``, each cell's selection in ``specs``) as one batched model, each finished
    run handed to ``store.add``; the teachers and irreducible-loss models come from ``cache`` (``_shared`` made
    them). In a task, ``data`` is (dataset, data dir, holdout size, label noise, its seed) to read, and
    ``policies`` the learned teachers' files to load."""
    if isinstance(data[0], Splits):
        splits, holdout, corrupted = data
    else:
        dataset, data_dir, *corruption = data
        splits, holdout, corrupted = _data(load_splits(dataset, data_dir), *corruption)
    for name, file in (policies or {}).items():
        register(name, *load_scorer(Path(file)))
    selections = [(Selection(**specs[cell]), k) for cell, k in runs]
    used = sorted({k for s, k in selections if s.uses_teacher})
    teachers = load_or_train_teachers(splits, used, teacher, cache, device=device) if used else {}
    logits = {k: predict(m, splits.train.images) for k, m in teachers.items()} if used else None
    irreducible = None
    if any(MEASURES[s.measure].reads_irreducible for s, _ in selections):
        irreducible = irreducible_losses(splits, irreducible_models(
            splits, holdout, sorted({k for _, k in selections}), cache, irreducible_model, device=device))
    trainer = StudentTrainer(student, splits, selections, logits, irreducible, corrupted, device=device)
    with Sink(store, runs, root, hparams, _headline, desc=f"{desc}: {len(runs)}", device=device) as sink:
        trainer.fit(sink, checkpoint)


def _headline(result: StudentResult) -> dict[str, float]:
    return {"test_accuracy": result.test_accuracy, "best_step": result.best_step}


def _unfit(observed):
    raise RuntimeError("a learned teacher was used before it was trained")


def _train_policies(names: list[str], policy: PolicyConfig, splits, teacher_config, args, store: Store,
                    root: Path, saved: Path | None = None) -> dict[str, str]:
    """Train each learned teacher once, in the env with seed 0's teacher (its inputs are predictive
    distributions, so one policy serves every student seed), and register it as a measure; with ``saved``, also
    write each to a file there (``{name: file}``, what a task loads). ``splits.val`` is the holdout carved from
    the training data: the reward never reads the students' validation images."""
    teacher = load_or_train_teachers(splits, [0], teacher_config, Path(args.teacher_cache))[0]
    logits = predict(teacher, splits.train.images)
    files: dict[str, str] = {}
    for name in names:
        kind, reward, seed = candidates(args)[name]
        config = dataclasses.replace(policy, reward=reward, seed=seed)
        started = time.time()
        progress = Progress(f"{name} teacher")
        progress.begin(policy.episodes * policy.steps, 0)
        if kind == "reinforce":
            learned = train_reinforce(splits, logits, config, seed=seed, progress=progress.advance)
        else:
            try:
                learned = train_ppo(splits, logits, config, seed=seed, logdir=root / "policies" / name)
            except ImportError as e:
                raise UsageError(f"{e.name} is not installed; pip install -e '.[rl]'") from None
        register(name, learned if kind == "reinforce" else ppo_scorer(learned), config.observe_labels)
        if saved is not None:
            files[name] = str(save_policy(learned, saved / name, config.observe_labels))
        progress.close()
        store.reference("policy_training_s", name, time.time() - started)
    return files


if __name__ == "__main__":
    run_cli(main)
