"""Reproduce the thesis' Tables 2.2 and 2.3: ``python -m benchmarks.network --dataset fashion-mnist``.

Every configuration (all its seeds at once) trains as one stacked model for ``--steps`` steps per
node. Table 2.2: node-average and collective-decision test accuracy beside the thesis, and the bytes
a node sends per step beside what a DDP gradient all-reduce of the same model would move; then the
steps each configuration needed to reach ``--target-accuracy`` on validation. ``--unsupervised vae``
or ``bigan`` gives Table 2.3 (linear probes on each node's features). Results go atomically to
``--out``, TensorBoard runs to ``<logdir>/network/<config>/seed<k>``, curves to a PNG beside them; a
re-run of the same command skips finished configurations.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm import tqdm

from agents.network import MODELS, node_model
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
from envs.network import SUPERVISED_CONTENTS
from trainers.network import NetworkConfig, NetworkResult, NetworkTrainer
from trainers.network_objectives import UNSUPERVISED

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
QUICK = {"steps": 40, "eval_every": 20}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.network", description=__doc__.split("\n")[0])
    d = NetworkConfig()
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS), help="cifar10 as in the thesis")
    p.add_argument("--data-dir", default=None, help="dataset root (default $COMMCHANNELS_DATA, else a cache)")
    p.add_argument("--unsupervised", default=None, choices=UNSUPERVISED, help="Table 2.3 with VAE or BiGAN nodes")
    p.add_argument("--nodes", default=None, help="comma-separated node counts (with --content: every "
                   "combination; default: the thesis' configurations)")  # fmt: skip
    p.add_argument("--content", default=None, help=f"comma-separated contents from {','.join(SUPERVISED_CONTENTS)}")
    p.add_argument("--neighbours", type=int, default=None, help="k nearest nodes on the ring (default all others)")
    p.add_argument("--p-broadcast", type=float, default=None, help="default p_consume / neighbours")
    p.add_argument("--p-consume", type=float, default=d.p_consume)
    p.add_argument("--temperature", type=float, default=d.temperature, help="of received logits")
    p.add_argument("--comm-weight", type=float, default=d.comm_weight, help="scale of the loss on received samples")
    p.add_argument("--capacity", type=int, default=None, help="inbox size in samples (default 10 minibatches)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps per node")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-every", type=int, default=None, help=f"steps between evaluations (default {d.eval_every}"
                   "; 1000 with --unsupervised, where each evaluation trains linear probes)")  # fmt: skip
    p.add_argument("--val-samples", type=int, default=5000, help="validation images of the curves (0: all)")
    p.add_argument("--model", default=None, choices=list(MODELS), help="default dcgan for cifar10, else dcgan-small")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..n-1 (default 3, 1 with --quick)")
    p.add_argument("--target-accuracy", type=float, default=85.0, help="validation accuracy (%%) whose first "
                   "crossing is counted (changing it retrains nothing)")  # fmt: skip
    p.add_argument("--logdir", default="runs")
    p.add_argument("--out", default=None, help="results JSON (default results/network[-vae|-bigan][-quick].json)")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run of every configuration")
    return p


def configs(args) -> list[NetworkConfig]:
    """The thesis' table, or every combination of ``--nodes`` and ``--content``."""
    if args.nodes is None and args.content is None:
        table = UNSUPERVISED_TABLE if args.unsupervised else SUPERVISED_TABLE
    else:
        allowed = ("none", "features") if args.unsupervised else SUPERVISED_CONTENTS
        contents = parse_list(args.content, allowed, "content") if args.content else ["none"]
        table = [(n, c if n > 1 else "none") for n in parse_ints(args.nodes or "10", "--nodes") for c in contents]
        table = list(dict.fromkeys(table))
    quick = QUICK if args.quick else {}
    every = args.eval_every or (1000 if args.unsupervised else NetworkConfig.eval_every)
    common = {
        "p_broadcast": args.p_broadcast, "p_consume": args.p_consume, "temperature": args.temperature,
        "comm_weight": args.comm_weight, "capacity": args.capacity, "batch_size": args.batch_size, "lr": args.lr,
        "steps": quick.get("steps", args.steps), "eval_every": quick.get("eval_every", every),
        "model": args.model or ("dcgan" if args.dataset == "cifar10" else "dcgan-small"),
        "unsupervised": args.unsupervised,
    }  # fmt: skip
    try:
        out = []
        for nodes, content in table:
            k = args.neighbours if nodes > 1 else 0  # NetworkConfig checks it against nodes
            out.append(NetworkConfig(nodes=nodes, neighbours=k, content=content, **common))
        return out
    except ValueError as e:
        raise UsageError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if not 0 < args.target_accuracy <= 100:
        raise UsageError(f"--target-accuracy is a percentage in (0, 100], got {args.target_accuracy}")
    if args.val_samples < 0:
        raise UsageError(f"--val-samples must be >= 0, got {args.val_samples}")
    chosen = configs(args)
    splits = load_splits(args.dataset, args.data_dir)
    if args.val_samples:
        splits = dataclasses.replace(splits, val=type(splits.val)(*(t[: args.val_samples] for t in (
            splits.val.images, splits.val.labels))))  # fmt: skip
    for c in chosen:
        per_node = len(splits.train.images) // c.nodes
        if per_node < c.batch_size:
            raise UsageError(f"{c.nodes} nodes get {per_node} training images each, fewer than a minibatch of "
                             f"{c.batch_size}; use fewer nodes or a smaller --batch-size")  # fmt: skip
    suffix = (f"-{args.unsupervised}" if args.unsupervised else "") + ("-quick" if args.quick else "")
    out = Path(args.out or f"results/network{suffix}.json")
    shared = {k: v for k, v in dataclasses.asdict(chosen[0]).items() if k not in ("nodes", "neighbours", "content")}
    identity = {"dataset": args.dataset, "val_samples": args.val_samples, **shared, "neighbours": args.neighbours}
    results = Results(out, "network", identity)
    data = results.data
    started = time.time()
    logdir = Path(args.logdir) / "network"
    pending = [(c, [k for k in range(seeds) if str(k) not in data.get("configs", {}).get(c.name, {}).get("runs", {})])
               for c in chosen]  # fmt: skip
    pending = [(c, ks) for c, ks in pending if ks]
    with tqdm(total=sum(c.steps for c, _ in pending), desc="network", unit="step") as bar:
        for c, ks in pending:
            bar.set_postfix_str(f"{c.name} x{len(ks)} seeds")
            for k, r in zip(ks, _train(c, splits, ks, logdir, bar.update), strict=True):
                entry = data.setdefault("configs", {}).setdefault(c.name, {"config": dataclasses.asdict(c)})
                entry.setdefault("runs", {})[str(k)] = dataclasses.asdict(r)
            data["wall_time_s"] = data.get("wall_time_s", 0.0) + time.time() - started
            started = time.time()
            results.save()  # after every configuration: a killed benchmark keeps them
    data["wall_time_s"] = data.get("wall_time_s", 0.0) + time.time() - started
    data["ddp_bytes_per_node_step"] = {c.name: ddp_bytes(c, splits.shape, int(splits.train.labels.max()) + 1)
                                       for c in chosen}  # fmt: skip
    results.save()
    _report(data, chosen, seeds, args.target_accuracy, logdir, out)
    return 0


def ddp_bytes(config: NetworkConfig, shape: tuple[int, ...], classes: int) -> float:
    """Bytes one node sends per step in a ring all-reduce of the model's float32 gradients: 2 (N-1)/N x 4 P."""
    kind = config.unsupervised or "classifier"
    params = sum(p.numel() for p in node_model(kind, shape, MODELS[config.model], classes).parameters())
    return 2 * (config.nodes - 1) / config.nodes * 4 * params


def _train(config: NetworkConfig, splits, seeds: list[int], logdir: Path, progress) -> list[NetworkResult]:
    writers = [summary_writer(logdir / config.name / f"seed{k}") for k in seeds]

    def log(step: int, metrics: dict[str, list[float]]) -> None:
        for tag, values in metrics.items():
            for writer, value in zip(writers, values, strict=True):
                writer.add_scalar(tag, value, step)

    results = NetworkTrainer(config, splits, seeds).fit(progress=progress, logger=log)
    hparams = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    for k, writer, r in zip(seeds, writers, results, strict=True):
        writer.add_hparams({**hparams, "config": config.name, "seed": k},
                           {"hparam/test_average": r.test_average, "hparam/test_collective": r.test_collective},
                           run_name=".")  # fmt: skip
        writer.close()
    return results


def _fmt(values: list[float], seeds: int) -> str:
    mean, std = mean_std(values)
    return f"{mean:.1f}" + (f" ± {std:.1f}" if seeds > 1 else "")


def _report(data: dict, chosen: list[NetworkConfig], seeds: int, target: float, logdir: Path, out: Path) -> None:
    rows, steps_rows, panels = [], [], {"node average": {}, "collective decision": {}}
    for c in chosen:
        runs = [NetworkResult(**data["configs"][c.name]["runs"][str(k)]) for k in range(seeds)]
        thesis = THESIS.get(c.name, (None, None, None))
        show = lambda v: "-" if v is None else f"{v}"  # noqa: E731
        sent = mean_std([r.bytes_sent_per_node_step for r in runs])[0]
        rows.append([
            c.name, _fmt([r.test_average for r in runs], seeds), _fmt([r.test_collective for r in runs], seeds),
            show(thesis[0]), show(thesis[1]), f"{sent:,.0f}", f"{data['ddp_bytes_per_node_step'][c.name]:,.0f}",
            f"{mean_std([r.consumed_from_inbox for r in runs])[0]:.2f}",
        ])  # fmt: skip
        steps_rows.append([
            c.name, format_counts([r.steps_to_reach(target, collective=False) for r in runs]),
            format_counts([r.steps_to_reach(target) for r in runs]), f"{thesis[2]:,}" if thesis[2] else "-",
        ])  # fmt: skip
        longest = max(runs, key=lambda r: len(r.steps))
        panels["node average"][c.name] = (longest.steps, [r.val_average for r in runs])
        panels["collective decision"][c.name] = (longest.steps, [r.val_collective for r in runs])
    unsupervised = chosen[0].unsupervised
    what = f"linear probes on {unsupervised} features, at the best validation stage" if unsupervised else (
        f"after {chosen[0].steps:,} steps per node")  # fmt: skip
    table = "2.3" if unsupervised else "2.2"
    print(f"\nTable {table}: test accuracy (%), {what}; mean ± std over {seeds} seed(s); thesis: CIFAR-10")
    print(format_table(["config", "average", "collective", "thesis avg", "thesis coll", "bytes sent/node/step",
                        "DDP all-reduce bytes/node/step", "from inbox"], rows))  # fmt: skip
    print(f"\nsteps per node until validation accuracy first reached {target:g}% (thesis: 85% on CIFAR-10, test)")
    print(format_table(["config", "node average", "collective", "thesis"], steps_rows))
    png = logdir / (f"figure_table_2_3_{unsupervised}.png" if unsupervised else "figure_table_2_2.png")
    plot_panels(png, list(panels.items()), "steps per node", "validation accuracy (%)")
    print(f"\nresults: {out}   figure: {png}   TensorBoard: tensorboard --logdir {logdir}   "
          f"wall time: {data['wall_time_s']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
