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
import functools
import os
from pathlib import Path

from agents.network import MODELS, node_model
from benchmarks.cli import ArgumentParser, UsageError, add_common, add_data, finite_float, variants
from benchmarks.harness import (
    Sink,
    check_memory,
    device_of,
    flat_hparams,
    parse_ints,
    parse_list,
    run_cli,
)
from benchmarks.launch import add_launcher, launch, plan, prepare
from benchmarks.network_report import report, sweep_report
from benchmarks.store import Store, checkpoint_of, prefix, preflight
from envs.data import DATASETS, Split, Splits, load_splits
from envs.network import SUPERVISED_CONTENTS, UNSUPERVISED_CONTENTS
from envs.routing import check_shard_size
from trainers.base import Events
from trainers.distributed import EXCHANGES
from trainers.group import Group
from trainers.network import AVERAGING, NetworkConfig, NetworkResult, NetworkTrainer
from trainers.network.ddp import DDPBaseline

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
             default_text="the thesis' configurations")
    p.option("--content", None, f"comma-separated contents from {','.join(SUPERVISED_CONTENTS)}",
             default_text="the thesis' configurations")
    p.option("--neighbours", None, "k nearest nodes on the ring", default_text="all others", type=int)
    with p.group("data"):
        add_data(p, "cifar10", "dataset (cifar10 as in the thesis)", choices=list(DATASETS))
        p.option("--val-samples", 5000, "validation images of the curves (0: all)", type=int)
    p.option("--target-accuracy", 85.0, "validation accuracy (%%) whose first crossing is counted (changing "
             "it retrains nothing)", type=finite_float)
    p.option("--distributed", False, "spread each configuration's nodes over the processes torchrun starts "
             "(alone: a world of one)", action="store_true")
    p.option("--baseline", None, "comma-separated rivals of codistillation, each trained beside every node count "
             "above 1: ddp = one DistributedDataParallel replica per process on the union of its nodes' shards; "
             "gossip = each node averages its parameters with its 2 ring neighbours' (and, as a second row, with "
             "all N-1 others'); local-sgd = every node's parameters averaged by one all-reduce; allreduce = the "
             "gradients of all nodes averaged every step, replicas started equal (DDP with a replica per node)",
             default_text="none")
    p.option("--average-every", "1", "comma-separated periods (steps) of gossip and local-sgd: a row per value",
             read_with={"baseline": None})
    p.option("--exchange", "p2p", "how posts travel between processes: p2p (batch_isend_irecv with each peer) or "
             "all_to_all (all_to_all_single with every process)", choices=list(EXCHANGES),
             read_with={"distributed": (True,)})
    p.option("--backend", "auto", "torch.distributed backend: auto is nccl when every process has a GPU of its "
             "own, else gloo", choices=["auto", "gloo", "nccl"])
    p.option("--threads", 0, "torch threads of each process (--distributed): 0 is this machine's cores over its "
             "processes; equal threads give equal float sums, e.g. across --nnodes launches on one machine", type=int)
    p.option("--timeout", 120.0, "seconds a process waits for a silent peer before it stops with one line",
             type=finite_float)
    p.fixed = {"nodes", "content", "unsupervised", "dataset", "val-samples", "target-accuracy", "distributed",
               "baseline", "exchange", "backend", "timeout", "threads"}
    add_launcher(p)
    add_common(p, out="results/network[-vae|-bigan][-quick].json", quick="3 (1 with --quick)|every "
               "configuration, one seed, 40 steps")
    return p


def configs(parser: ArgumentParser, args) -> list[NetworkConfig]:
    """The thesis' table, or every combination of ``--nodes`` and ``--content``."""
    if args.nodes is None and args.content is None:
        table = UNSUPERVISED_TABLE if args.unsupervised else SUPERVISED_TABLE
    else:
        allowed = UNSUPERVISED_CONTENTS if args.unsupervised else SUPERVISED_CONTENTS
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
                         for h in ([1] if average == "allreduce" else periods)]
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
                                                **extra})


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
                         "would train every node; add --distributed")
    device = device_of(args)
    if args.launcher != "local" and (args.distributed or "ddp" in baselines(args)):
        raise UsageError(f"--launcher {args.launcher} sends cells to one process each; --distributed and --baseline "
                         "ddp run their processes under torchrun (docs: Run on a cluster)")
    prepare(args)
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
                         f"{group.world}")
    return group


def _run(parser: ArgumentParser, args, seeds: list[int], device, chosen: list, group: Group) -> int:
    """Every job (a configuration's missing seeds): rank 0 picks it from the results file and tells the others (or,
    with a cluster launcher, sends each as tasks)."""
    splits = _splits(args)
    for c in (c for _, _, cs in chosen for c in cs):
        per_node = len(splits.train.images) // c.nodes
        try:
            check_shard_size(len(splits.train.images), c.nodes, c.shard_size)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if per_node < c.batch_size:
            raise UsageError(f"{c.nodes} nodes get {per_node} training images each, fewer than a minibatch of "
                             f"{c.batch_size}; use fewer nodes or a smaller --batch-size")
        if group.world == 1:  # a process group's processes share the nodes: each checks its own part on start
            check_memory(lambda c=c: NetworkTrainer(c, splits, seeds[:1], device=device), len(seeds), device,
                         f"{c.name} x --seeds {len(seeds)}")
    suffix = (f"-{args.unsupervised}" if args.unsupervised else "") + ("-quick" if args.quick else "")
    suffix += f"-distributed-p{group.world}" if args.distributed else ""
    out = Path(args.out or f"results/network{suffix}.json")
    first = chosen[0][2][0]
    shared = {k: v for k, v in dataclasses.asdict(first).items() if k not in ("nodes", "neighbours", "content")}
    identity = {"dataset": args.dataset, "val_samples": args.val_samples, **shared, "neighbours": args.neighbours,
                "routing": 2}
    if args.distributed:
        identity.update(processes=group.world, exchange=args.exchange)
    if splits.source:
        identity["source"] = splits.source  # CIFAR-10: the official release or the JPEG stand-in
    swept = parser.sweep_flag(args.sweep)
    root = Path(args.logdir) / out.stem
    if group.leader:
        preflight([(root, "--logdir")])
    with Store(out, "network", identity, swept) if group.leader else contextlib.nullcontext() as store:
        tasks = []
        for label, v, cs in chosen:
            at = prefix(label)
            specs = {c.name: dataclasses.asdict(c) for c in cs}
            ddp = {f"ddp-{n}nodes": config_of(parser, v, n, "none") for n in _ddp_nodes(args, cs)}
            specs |= {cell: dataclasses.asdict(c) for cell, c in ddp.items()}
            if args.launcher != "local":  # tasks of one cell's seeds, as one trainer here batches them
                tasks += plan(store, label, list(specs), seeds, v.runs_per_task, lambda runs, v=v, c=specs, at=at:
                              functools.partial(_task, v, c[runs[0][0][len(at):]], device, root, runs),
                              per_cell=True)
                continue
            jobs = store.jobs(label, list(specs), seeds, per_cell=True, specs=specs) if group.leader else None
            while (job := group.broadcast(_with_spec(store, next(jobs, None)) if jobs else None)) is not None:
                _train(v, *job, splits, device, group, store, root, checkpoint_of(out, label, group.rank))
        if group.leader:
            launch(store, tasks, args)
            for label, _, cs in chosen:
                for c in cs:
                    store.data["cells"][prefix(label) + c.name]["ring_allreduce_estimate_per_node_step"] = (
                        ring_estimate(c, splits.shape, int(splits.train.labels.max()) + 1))
        if not group.leader:
            return 0
        for label, _, cs in chosen:
            at = prefix(label)
            ddp = [f"{at}ddp-{n}nodes" for n in _ddp_nodes(args, cs)]
            store.summarise([at + c.name for c in cs] + ddp, seeds, ["test_average", "test_collective"])
            report(store, at, cs, seeds, args.target_accuracy, root, group.world if args.distributed else 0, ddp)
        if swept:
            sweep_report(store, swept, chosen, seeds, root)
        if splits.source:
            from envs.cifar import SOURCES

            print(f"\n{args.dataset} read from {SOURCES[splits.source]}")
        print(f"\nresults: {out}   figures: {root}   TensorBoard: tensorboard --logdir {root}")
    return 0


def _ddp_nodes(args, chosen: list[NetworkConfig]) -> list[int]:
    """The node counts that get a DDP row (one replica per process; a single node is already one model)."""
    return sorted({c.nodes for c in chosen if c.nodes > 1 and not c.average}) if "ddp" in baselines(args) else []


def _with_spec(store: Store, job: list[tuple[str, int]] | None) -> tuple[list[tuple[str, int]], dict] | None:
    """A job (one cell's runs) and its cell's configuration, as rank 0 tells every process."""
    return None if job is None else (job, store.specs[job[0][0]])


def _task(args, spec: dict, device, root: Path, runs: list[tuple[str, int]], store, checkpoint: Path) -> None:
    """A cluster task: one cell's ``runs`` in this process alone, the data read here."""
    _train(args, list(runs), spec, _splits(args), device, Group(), store, root, checkpoint)


def _splits(args) -> Splits:
    """The dataset's splits, the validation split cut to ``--val-samples`` where asked."""
    splits = load_splits(args.dataset, args.data_dir)
    if args.val_samples:
        splits = dataclasses.replace(splits, val=Split(splits.val.images[: args.val_samples],
                                                       splits.val.labels[: args.val_samples]))
    return splits


def _train(args, job: list[tuple[str, int]], spec: dict, splits, device, group: Group, store: Store | None,
           root: Path, checkpoint: Path) -> None:
    """One job on every process; rank 0 records its runs (and its wall time, per cell), the others only train."""
    cell = job[0][0]
    config = NetworkConfig(**spec)
    ddp = cell.rsplit("/", 1)[-1].startswith("ddp-")
    trainer = (DDPBaseline if ddp else NetworkTrainer)(config, splits, [k for _, k in job], device=device, group=group)
    if store is None:
        trainer.fit(Events(), checkpoint)
        checkpoint.unlink(missing_ok=True)
        return
    hparams = {**flat_hparams(config), "dataset": args.dataset, "processes": group.world}
    name = f"DDP, {config.nodes} nodes' shards" if ddp else config.name
    with Sink(store, job, root, hparams, _headline, desc=f"{name} x{len(job)} seeds", device=device) as sink:
        trainer.fit(sink, checkpoint)
    if not isinstance(store, Store):  # a cluster task: the driver keeps the store
        return
    entry = store.data["cells"][cell]
    entry["wall_time_s"] = entry.get("wall_time_s", 0.0) + trainer.elapsed_s  # its parts before kills included
    store.save()


def _headline(result: NetworkResult) -> dict[str, float]:
    return {"test_average": result.test_average, "test_collective": result.test_collective}


def ring_estimate(config: NetworkConfig, shape: tuple[int, ...], classes: int) -> float:
    """Bytes one node would send per step if the N nodes were DDP replicas all-reducing their float32
    gradients in a ring: 2 (N-1)/N x 4 P (an estimate; ``--baseline ddp`` measures a real DDP)."""
    kind = config.unsupervised or "classifier"
    params = sum(p.numel() for p in node_model(kind, shape, MODELS[config.model], classes).parameters())
    return 2 * (config.nodes - 1) / config.nodes * 4 * params


if __name__ == "__main__":
    run_cli(main)
