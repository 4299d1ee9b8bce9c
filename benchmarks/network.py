"""Reproduce the thesis' Tables 2.2 and 2.3: ``python -m benchmarks.network --dataset fashion-mnist``.

Every configuration (all its seeds at once) trains as one stacked model for ``--steps`` steps per
node. Table 2.2: node-average and collective-decision test accuracy beside the thesis, and the bytes
a node sends per step beside a ring all-reduce estimate of the same model's gradients; then the
steps each configuration needed to reach ``--target-accuracy`` on validation. ``--unsupervised vae``
or ``bigan`` gives Table 2.3 (linear probes on each node's features). Results go atomically to
``--out`` (with each run's best weights beside it), TensorBoard runs to ``<logdir>/<out name>/<config>/seed<k>``,
curves to a PNG beside them; a re-run of the same command skips finished runs and resumes an
interrupted one from its checkpoint.

``torchrun --nproc-per-node P -m benchmarks.network --distributed ...`` spreads every configuration's
nodes over P processes (and machines, with torchrun's ``--nnodes``); the table adds the bytes the
processes handed to torch.distributed and the wall time. ``--baseline ddp`` adds a data-parallel
baseline: one DDP replica per process. Only rank 0 writes results, TensorBoard and tables; every rank
keeps its own checkpoint, so ``torchrun --max-restarts R`` resumes a group that lost a process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import time
from pathlib import Path

from agents.network import MODELS, node_model
from benchmarks.cli import ArgumentParser, UsageError, add_common, add_data, finite_float, variants
from benchmarks.harness import (
    Sink,
    check_memory,
    device_of,
    flat_hparams,
    format_counts,
    format_table,
    parse_ints,
    parse_list,
    plot_frontier,
    plot_panels,
    plot_sweep,
    run_cli,
)
from benchmarks.protocol import SUSTAIN, crossing, held_target, paired_ratio
from benchmarks.store import Store, checkpoint_of, format_summary, mean_std, prefix, preflight, seed_text
from envs.data import DATASETS, Split, load_splits
from envs.network import SUPERVISED_CONTENTS
from envs.routing import check_shard_size
from trainers.base import Events
from trainers.ddp import DDPBaseline
from trainers.distributed import EXCHANGES
from trainers.group import Group
from trainers.network import AVERAGING, NetworkConfig, NetworkResult, NetworkTrainer

# Thesis Table 2.2 (CIFAR-10, 5,000 steps): config -> (average, collective) test accuracy (%), and the
# steps to 85% of its second part; Table 2.3: (average, collective) of the linear probes.
THESIS = {
    "1node": (84.5, None, 5_900),
    "10nodes-none": (71.1, 72.9, None),
    "10nodes-logits": (79.0, 84.8, 5_300),
    "10nodes-labels": (81.8, 86.8, None),
    "10nodes-features": (72.0, 80.1, None),
    "20nodes-labels": (None, 87.7, 2_700),
    "vae-1node": (41.8, None, None),
    "vae-10nodes-none": (41.6, 45.2, None),
    "vae-10nodes-features": (41.5, 42.7, None),
    "bigan-1node": (46.9, None, None),
    "bigan-10nodes-none": (44.5, 49.9, None),
    "bigan-10nodes-features": (44.3, 46.2, None),
}
SUPERVISED_TABLE = [(1, "none"), (10, "none"), (10, "logits"), (10, "labels"), (10, "features"), (20, "labels")]
UNSUPERVISED_TABLE = [(1, "none"), (10, "none"), (10, "features")]
QUICK = {"steps": 40, "eval_every": 20, "seeds": [0]}
# CIFAR-10's classifiers: dcgan-bn with augmentation and a cosine schedule over 30,000 steps, chosen on the
# validation accuracy of one node, tuning seed 0, among DCGAN with and without batch norm, augmentation and
# cosine budgets of 10k/20k/30k steps (docs/network.md); evaluated every 500 steps
CIFAR_RECIPE = {"augment": True, "lr_schedule": "cosine", "steps": 30_000, "eval_every": 500}


BASELINES = ("ddp", *AVERAGING)  # the rivals of codistillation (--baseline)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.network", description=__doc__.split("\n")[0])
    p.config(NetworkConfig, exclude=("nodes", "neighbours", "content", "average", "average_every"))
    p.option("--nodes", None, "comma-separated node counts (with --content: every combination)",
             default_text="the thesis' configurations")  # fmt: skip
    p.option("--content", None, f"comma-separated contents from {','.join(SUPERVISED_CONTENTS)}",
             default_text="the thesis' configurations")  # fmt: skip
    p.option("--neighbours", None, "k nearest nodes on the ring", default_text="all others", type=int)
    with p.group("data"):
        add_data(p, "cifar10", "dataset (cifar10 as in the thesis)", choices=list(DATASETS))
        p.option("--val-samples", 5000, "validation images of the curves (0: all)", type=int)
    p.option("--target-accuracy", 85.0, "validation accuracy (%%) whose first crossing is counted (changing "
             "it retrains nothing)", type=finite_float)  # fmt: skip
    p.option("--distributed", False, "spread each configuration's nodes over the processes torchrun starts "
             "(alone: a world of one)", action="store_true")  # fmt: skip
    p.option("--baseline", None, "comma-separated rivals of codistillation, each trained beside every node count "
             "above 1: ddp = one DistributedDataParallel replica per process on the union of its nodes' shards; "
             "gossip = each node averages its parameters with its 2 ring neighbours' (and, as a second row, with "
             "all N-1 others'); local-sgd = every node's parameters averaged by one all-reduce; allreduce = the "
             "gradients of all nodes averaged every step, replicas started equal (DDP with a replica per node)",
             default_text="none")  # fmt: skip
    p.option("--average-every", "1", "comma-separated periods (steps) of gossip and local-sgd: a row per value",
             read_with={"baseline": None})  # fmt: skip
    p.option("--exchange", "p2p", "how posts travel between processes: p2p (batch_isend_irecv with each peer) or "
             "all_to_all (all_to_all_single with every process)", choices=list(EXCHANGES),
             read_with={"distributed": (True,)})  # fmt: skip
    p.option("--backend", "auto", "torch.distributed backend: auto is nccl when every process has a GPU of its "
             "own, else gloo", choices=["auto", "gloo", "nccl"])  # fmt: skip
    p.option("--threads", 0, "torch threads of each process (--distributed): 0 is this machine's cores over its "
             "processes; equal threads give equal float sums, e.g. across --nnodes launches on one machine", type=int)
    p.option("--timeout", 120.0, "seconds a process waits for a silent peer before it stops with one line",
             type=finite_float)  # fmt: skip
    p.fixed = {"nodes", "content", "unsupervised", "dataset", "val-samples", "target-accuracy", "distributed",
               "baseline", "exchange", "backend", "timeout", "threads"}  # fmt: skip
    add_common(p, out="results/network[-vae|-bigan][-quick].json", quick="3 (1 with --quick)|every "
               "configuration, one seed, 40 steps")  # fmt: skip
    return p


def configs(parser: ArgumentParser, args) -> list[NetworkConfig]:
    """The thesis' table, or every combination of ``--nodes`` and ``--content``."""
    if args.nodes is None and args.content is None:
        table = UNSUPERVISED_TABLE if args.unsupervised else SUPERVISED_TABLE
    else:
        allowed = ("none", "features") if args.unsupervised else SUPERVISED_CONTENTS
        contents = parse_list(args.content, allowed, "content") if args.content else ["none"]
        table = [(n, c if n > 1 else "none") for n in parse_ints(args.nodes or "10", "--nodes") for c in contents]
        table = list(dict.fromkeys(table))
    rows = [config_of(parser, args, nodes, content) for nodes, content in table]
    averaging = [b for b in baselines(args) if b in AVERAGING]
    periods = parse_ints(args.average_every, "--average-every") if averaging else []
    for n in sorted({c.nodes for c in rows if c.nodes > 1}):
        for average in averaging:
            for k in dict.fromkeys([min(2, n - 1), n - 1]) if average == "gossip" else [n - 1]:
                rows += [config_of(parser, args, n, "none", average=average, average_every=h, neighbours=k)
                         for h in ([1] if average == "allreduce" else periods)]  # fmt: skip
    return rows


def baselines(args) -> list[str]:
    """The rivals of ``--baseline``."""
    return parse_list(args.baseline, BASELINES, "--baseline") if args.baseline else []


def config_of(parser: ArgumentParser, args, nodes: int, content: str, **extra) -> NetworkConfig:
    """One configuration; defaults that depend on other flags (model, evaluation interval) filled here."""
    derived = {}
    if "model" not in args.given:
        derived["model"] = "dcgan-bn" if args.dataset == "cifar10" else "dcgan-small"
    if args.dataset == "cifar10" and not args.unsupervised:  # the classifiers' recipe chosen on validation
        derived |= {k: v for k, v in CIFAR_RECIPE.items() if k not in args.given and not (args.quick and k in QUICK)}
    if "eval_every" not in args.given and not args.quick and args.unsupervised:
        derived["eval_every"] = 1000  # each evaluation trains linear probes
    k = args.neighbours if nodes > 1 else 0  # NetworkConfig checks it against nodes
    return parser.build(NetworkConfig, args, **{"nodes": nodes, "neighbours": k, "content": content, **derived,
                                                **extra})  # fmt: skip


def _cell_config(parser: ArgumentParser, args, cell: str) -> NetworkConfig:
    """The configuration of a cell name (``10nodes-labels``, ``vae-1node``...), for a resumed job."""
    name = cell.rsplit("/", 1)[-1]
    averaged = re.fullmatch(r"(\d+)nodes-(gossip|local-sgd|allreduce)(?:-k(\d+))?(?:-every(\d+))?", name)
    if averaged:
        n = int(averaged[1])
        return config_of(parser, args, n, "none", average=averaged[2], average_every=int(averaged[4] or 1),
                         neighbours=int(averaged[3] or n - 1))  # fmt: skip
    match = re.fullmatch(r"(?:(?:vae|bigan)-)?(?:1node|(\d+)nodes-(\w+))|ddp-(\d+)nodes", name)
    if match is None:
        raise UsageError(f"cannot resume the unfinished run of cell {cell!r}; delete the checkpoint to restart")
    if match[3]:
        return config_of(parser, args, int(match[3]), "none")
    return config_of(parser, args, int(match[1] or 1), match[2] or "none")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    seeds = args.seeds if args.seeds is not None else list(range(3))
    if not 0 < args.target_accuracy <= 100:
        raise UsageError(f"--target-accuracy is a percentage in (0, 100], got {args.target_accuracy}")
    if args.val_samples < 0:
        raise UsageError(f"--val-samples must be >= 0, got {args.val_samples}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.distributed:
        raise UsageError(f"torchrun started {os.environ['WORLD_SIZE']} processes but --distributed is off: each "
                         "would train every node; add --distributed")  # fmt: skip
    device = device_of(args)
    chosen = [(label, v, configs(parser, v)) for label, v in variants(parser, args)]
    group = _group(args, chosen)
    settled = False
    try:
        code = _run(parser, args, seeds, group.device if group.backend == "nccl" else device, chosen, group)
        settled = True
        return code
    finally:
        group.close(settled)


def _group(args, chosen: list) -> Group:
    """This process alone, or its place among the processes torchrun started (``--distributed``, ``--baseline``)."""
    if not (args.distributed or "ddp" in baselines(args)):
        return Group()
    from trainers.distributed import DistributedGroup

    group = DistributedGroup(timeout=args.timeout, exchange=args.exchange, backend=args.backend, threads=args.threads)
    few = sorted({c.nodes for _, _, cs in chosen for c in cs if c.nodes < group.world})
    if few:
        group.close(settled=False)
        raise UsageError(f"{group.world} processes cannot share configurations of {', '.join(map(str, few))} "
                         "node(s): every process needs a node; run fewer processes or pass --nodes of at least "
                         f"{group.world}")  # fmt: skip
    return group


def _run(parser: ArgumentParser, args, seeds: list[int], device, chosen: list, group: Group) -> int:
    """Every job (a configuration's missing seeds): rank 0 picks it from the results file and tells the others."""
    splits = load_splits(args.dataset, args.data_dir)
    if args.val_samples:
        splits = dataclasses.replace(splits, val=Split(splits.val.images[: args.val_samples],
                                                       splits.val.labels[: args.val_samples]))  # fmt: skip
    for c in (c for _, _, cs in chosen for c in cs):
        per_node = len(splits.train.images) // c.nodes
        try:
            check_shard_size(len(splits.train.images), c.nodes, c.shard_size)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if per_node < c.batch_size:
            raise UsageError(f"{c.nodes} nodes get {per_node} training images each, fewer than a minibatch of "
                             f"{c.batch_size}; use fewer nodes or a smaller --batch-size")  # fmt: skip
        if group.world == 1:  # a process group's processes share the nodes: each checks its own part on start
            check_memory(lambda c=c: NetworkTrainer(c, splits, seeds[:1], device=device), len(seeds), device,
                         f"{c.name} x --seeds {len(seeds)}")  # fmt: skip
    suffix = (f"-{args.unsupervised}" if args.unsupervised else "") + ("-quick" if args.quick else "")
    suffix += f"-distributed-p{group.world}" if args.distributed else ""
    out = Path(args.out or f"results/network{suffix}.json")
    first = chosen[0][2][0]
    shared = {k: v for k, v in dataclasses.asdict(first).items() if k not in ("nodes", "neighbours", "content")}
    identity = {"dataset": args.dataset, "val_samples": args.val_samples, **shared, "neighbours": args.neighbours,
                "routing": 2}  # fmt: skip
    if args.distributed:
        identity.update(processes=group.world, exchange=args.exchange)
    if splits.source:
        identity["source"] = splits.source  # CIFAR-10: the official release or the JPEG stand-in
    swept = parser.sweep_flag(args.sweep)
    root = Path(args.logdir) / out.stem
    if group.leader:
        preflight([(root, "--logdir")])
    with Store(out, "network", identity, swept) if group.leader else contextlib.nullcontext() as store:
        started = time.time()
        for label, v, cs in chosen:
            at = prefix(label)
            cells = [c.name for c in cs] + [f"ddp-{n}nodes" for n in _ddp_nodes(args, cs)]
            jobs = store.jobs(label, cells, seeds, per_cell=True) if group.leader else None
            while (job := group.broadcast(next(jobs, None) if jobs else None)) is not None:
                _train(parser, v, job, splits, device, group, store, root, checkpoint_of(out, label, group.rank))
            if group.leader:
                for c in cs:
                    store.data["cells"][at + c.name]["ring_allreduce_estimate_per_node_step"] = ring_estimate(
                        c, splits.shape, int(splits.train.labels.max()) + 1)  # fmt: skip
        if not group.leader:
            return 0
        store.add_time(time.time() - started)
        for label, _, cs in chosen:
            at = prefix(label)
            ddp = [f"{at}ddp-{n}nodes" for n in _ddp_nodes(args, cs)]
            store.summarise([at + c.name for c in cs] + ddp, seeds, ["test_average", "test_collective"])
            _report(store, at, cs, seeds, args.target_accuracy, root, group.world if args.distributed else 0)
            if ddp:
                _ddp_report(store, ddp, seeds, group.world)
        if swept:
            _sweep_report(store, swept, chosen, seeds, root)
        if splits.source:
            from envs.cifar import SOURCES

            print(f"\n{args.dataset} read from {SOURCES[splits.source]}")
        print(f"\nresults: {out}   figures: {root}   TensorBoard: tensorboard --logdir {root}")
    return 0


def _ddp_nodes(args, chosen: list[NetworkConfig]) -> list[int]:
    """The node counts that get a DDP row (one replica per process; a single node is already one model)."""
    return sorted({c.nodes for c in chosen if c.nodes > 1 and not c.average}) if "ddp" in baselines(args) else []


def _train(parser: ArgumentParser, args, job: list[tuple[str, int]], splits, device, group: Group,
           store: Store | None, root: Path, checkpoint: Path) -> None:  # fmt: skip
    """One job on every process; rank 0 records its runs (and its wall time, per cell), the others only train."""
    cell = job[0][0]
    config = _cell_config(parser, args, cell)
    ddp = cell.rsplit("/", 1)[-1].startswith("ddp-")
    trainer = (DDPBaseline if ddp else NetworkTrainer)(config, splits, [k for _, k in job], device=device, group=group)
    started = time.time()
    if store is None:
        trainer.fit(Events(), checkpoint)
        checkpoint.unlink(missing_ok=True)
        return
    hparams = {**flat_hparams(config), "dataset": args.dataset, "processes": group.world}
    name = f"DDP, {config.nodes} nodes' shards" if ddp else config.name
    with Sink(store, job, root, hparams, _headline, desc=f"{name} x{len(job)} seeds", device=device) as sink:
        trainer.fit(sink, checkpoint)
    entry = store.data["cells"][cell]
    entry["wall_time_s"] = entry.get("wall_time_s", 0.0) + time.time() - started
    store.save()


def _headline(result: NetworkResult) -> dict[str, float]:
    return {"test_average": result.test_average, "test_collective": result.test_collective}


def ring_estimate(config: NetworkConfig, shape: tuple[int, ...], classes: int) -> float:
    """Bytes one node would send per step if the N nodes were DDP replicas all-reducing their float32
    gradients in a ring: 2 (N-1)/N x 4 P (an estimate; ``--baseline ddp`` measures a real DDP)."""
    kind = config.unsupervised or "classifier"
    params = sum(p.numel() for p in node_model(kind, shape, MODELS[config.model], classes).parameters())
    return 2 * (config.nodes - 1) / config.nodes * 4 * params


def _runs(store: Store, cell: str, seeds: list[int]) -> list[NetworkResult]:
    fields = {f.name for f in dataclasses.fields(NetworkResult)}
    return [NetworkResult(**{k: v for k, v in store.runs(cell)[k].items() if k in fields}) for k in seeds]


def _report(store: Store, at: str, chosen: list[NetworkConfig], seeds: list[int], target: float, root: Path,
            processes: int) -> None:  # fmt: skip
    """Table 2.2 or 2.3, the steps-to-target table and the curves; ``processes`` > 0 (distributed) adds the bytes
    handed to torch.distributed and each configuration's wall time."""
    rows, panels, points = [], {"node average": {}, "collective decision": {}}, {}
    for c in chosen:
        cell = store.data["cells"][at + c.name]
        runs = _runs(store, at + c.name, seeds)
        thesis = THESIS.get(c.name, (None, None, None))
        show = lambda v: "-" if v is None else f"{v}"  # noqa: E731
        sent = mean_std([r.bytes_sent_per_node_step for r in runs])[0]
        wire = mean_std([r.wire_bytes_per_node_step for r in runs])[0]
        rows.append([
            c.name, format_summary([r.test_average for r in runs]), format_summary([r.test_collective for r in runs]),
            show(thesis[0]), show(thesis[1]), f"{sent:,.0f}",
            *([f"{wire:,.0f}", f"{cell.get('wall_time_s', 0):,.0f}"] if processes else []),
            f"{cell['ring_allreduce_estimate_per_node_step']:,.0f}",
            f"{mean_std([r.consumed_from_inbox for r in runs])[0]:.2f}", routing_digest(runs),
        ])  # fmt: skip
        longest = max(runs, key=lambda r: len(r.steps))
        panels["node average"][c.name] = (longest.steps, [r.val_average for r in runs])
        panels["collective decision"][c.name] = (longest.steps, [r.val_collective for r in runs])
        points[c.name] = (sent, [r.test_collective for r in runs])
    unsupervised = chosen[0].unsupervised
    what = f"linear probes on {unsupervised} features, at the best validation stage" if unsupervised else (
        f"after {chosen[0].steps:,} steps per node")  # fmt: skip
    table = "2.3" if unsupervised else "2.2"
    where = f"; nodes spread over {processes} processes{oversubscribed()}" if processes else ""
    print(f"\nTable {table}{', ' + at[:-1] if at else ''}: test accuracy (%), {what}; mean ± std over "
          f"{seed_text(seeds)}{where}; thesis: CIFAR-10")  # fmt: skip
    print(format_table(["config", "average", "collective", "thesis avg", "thesis coll", "bytes sent/node/step",
                        *(["wire bytes/node/step", "wall time (s)"] if processes else []),
                        "ring all-reduce of N replicas (estimate)/node/step", "from inbox", "routing"],
                       rows))  # fmt: skip
    _steps_table(store, at, chosen, seeds, target)
    png = root / at / (f"figure_table_2_3_{unsupervised}.png" if unsupervised else "figure_table_2_2.png")
    plot_panels(png, list(panels.items()), "steps per node", "validation accuracy (%)")
    plot_frontier(root / at / "accuracy_vs_bytes.png", points, "logical bytes sent per node per step (log)",
                  "collective test accuracy (%)", f"what each row sends and what it reaches ({seed_text(seeds)})")


def _steps_table(store: Store, at: str, chosen: list[NetworkConfig], seeds: list[int], thesis_target: float) -> None:
    """Steps per node to the first sustained validation crossing (``benchmarks.protocol``) of the headline
    targets (the highest node-average and collective accuracy the row without communication holds on every
    seed), with paired speedups over that row, and of ``--target-accuracy`` (the thesis' 85%)."""
    runs = {c.name: _runs(store, at + c.name, seeds) for c in chosen}
    control = next((c.name for c in sorted(chosen, key=lambda c: -c.nodes) if c.content == "none" and c.nodes > 1),
                   None)  # fmt: skip
    curves = {"average": lambda r: r.val_average, "collective": lambda r: r.val_collective}
    targets = {m: held_target([curve(r) for r in runs[control]]) for m, curve in curves.items()} if control else {}
    base = {m: [crossing(r.steps, curves[m](r), t) for r in runs[control]] for m, t in targets.items()}
    rows = []
    for c in chosen:
        row = [c.name]
        for measure, curve in curves.items():
            if measure not in targets:
                row += ["-", "-"]
                continue
            passes = [crossing(r.steps, curve(r), targets[measure]) for r in runs[c.name]]
            speedup = paired_ratio(base[measure], passes)
            row += [format_counts(passes), speedup.format(2, ratio=True) if speedup else "-"]
        row += [format_counts([crossing(r.steps, curve(r), thesis_target) for r in runs[c.name]])
                for curve in curves.values()]  # fmt: skip
        rows.append([*row, f"{THESIS[c.name][2]:,}" if THESIS.get(c.name, (0, 0, 0))[2] else "-"])
    heads = {m: f"{t:.2f}%" for m, t in targets.items()} or dict.fromkeys(curves, "-")
    print(f"\nsteps per node to the first sustained validation crossing ({SUSTAIN} evaluations in a row) of the "
          f"targets {control or 'no row without communication'} holds on every seed (node average "
          f"{heads['average']}, collective {heads['collective']}), speedups paired by seed over it [95% t-interval]; "
          f"and of {thesis_target:g}% (thesis: 85% on CIFAR-10, test)")  # fmt: skip
    print(format_table(["config", "average", "speedup", "collective", "speedup", f"average to {thesis_target:g}%",
                        f"collective to {thesis_target:g}%", "thesis"], rows))  # fmt: skip


def oversubscribed() -> str:
    """A note when this machine runs more of the group's processes than it has cores: its wall times then include
    the processes' wait for a core."""
    local, cores = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), len(os.sched_getaffinity(0))
    return f" ({local} of them on this machine's {cores} cores: oversubscribed)" if local > cores else ""


def routing_digest(runs: list[NetworkResult]) -> str:
    """Eight hex digits for the routing of every seed (who sent what to whom, what each node trained on): the
    same in the simulator and on any number of processes."""
    return hashlib.blake2b("".join(r.routing for r in runs).encode(), digest_size=4).hexdigest()


def _ddp_report(store: Store, cells: list[str], seeds: list[int], processes: int) -> None:
    """The DDP baseline: accuracy, what its hook handed to all-reduce, the ring's wire estimate, wall time."""
    rows = []
    for cell in cells:
        runs = _runs(store, cell, seeds)
        hook = mean_std([r.hook_bytes_per_step for r in runs])[0]
        rows.append([cell, format_summary([r.test_average for r in runs]), f"{hook:,.0f}",
                     f"{2 * (processes - 1) / processes * hook:,.0f}",
                     f"{store.data['cells'][cell].get('wall_time_s', 0):,.0f}"])  # fmt: skip
    print(f"\nBaseline: one DDP replica per process ({processes}){oversubscribed()}, each on the union of its "
          f"nodes' shards; test accuracy (%), mean ± std over {seed_text(seeds)}")  # fmt: skip
    print(format_table(["config", "accuracy", "handed to all-reduce (hook) bytes/process/step",
                        "ring all-reduce wire 2(P-1)/P x hook bytes/process/step", "wall time (s)"], rows))  # fmt: skip


def _sweep_report(store: Store, swept, chosen, seeds: list[int], root: Path) -> None:
    """The collective and the node-average test accuracy of every configuration against the swept value."""
    name, _, values = swept
    texts = [t for t, _ in values]
    names = [c.name for c in chosen[0][2]]  # the baseline's rows are left out of the sweep
    for metric, what, suffix in (("test_collective", "collective", ""), ("test_average", "node-average", "_average")):
        lines = {n: [[getattr(r, metric) for r in _runs(store, f"{name}={t}/{n}", seeds)] for t in texts]
                 for n in names}  # fmt: skip
        print(f"\nSweep over {name}: {what} test accuracy (%), mean ± std over {seed_text(seeds)}")
        print(format_table([name, *names], [[t, *(format_summary(lines[n][i]) for n in names)]
                                            for i, t in enumerate(texts)]))  # fmt: skip
        plot_sweep(root / f"sweep_{name}{suffix}.png", name, texts, lines, f"{what} test accuracy (%)")


if __name__ == "__main__":
    run_cli(main)
