"""Tables 2.2 and 2.3, the steps to the targets, the DDP rows and the figures (curves, accuracy against the bytes
each row sends), read from the results store: ``benchmarks.network`` calls it after training,
``benchmarks.report`` from a file."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from pathlib import Path

from benchmarks.harness import format_counts, format_table, plot_frontier, plot_panels, plot_sweep
from benchmarks.protocol import SUSTAIN, crossing, held_target, paired_difference, paired_ratio
from benchmarks.store import Store, format_summary, mean_std, seed_text
from trainers.network.config import NetworkConfig, NetworkResult

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
ORDER = ("labels", "logits", "features", "none")  # Table 2.2's contents, best first

def runs_of(store: Store, cell: str, seeds: list[int]) -> list[NetworkResult]:
    fields = {f.name for f in dataclasses.fields(NetworkResult)}
    return [NetworkResult(**{k: v for k, v in store.runs(cell)[k].items() if k in fields}) for k in seeds]


def report(store: Store, at: str, chosen: list[NetworkConfig], seeds: list[int], target: float, root: Path,
           processes: int, ddp: list[str]) -> None:
    """Table 2.2 or 2.3, the steps-to-target table, the DDP rows (``ddp``: their cells) and the figures: the
    curves and accuracy against bytes; ``processes`` > 0 (distributed) adds the bytes handed to
    torch.distributed and each configuration's wall time."""
    rows, panels, points = [], {"node average": {}, "collective decision": {}}, {}
    for c in chosen:
        cell = store.data["cells"][at + c.name]
        runs = runs_of(store, at + c.name, seeds)
        thesis = THESIS.get(c.name, (None, None, None))
        show = lambda v: "-" if v is None else f"{v}"  # noqa: E731
        sent = mean_std([r.bytes_sent_per_node_step for r in runs])[0]
        wire = mean_std([r.wire_bytes_per_node_step for r in runs])[0]
        rows.append([
            c.name, format_summary([r.test_average for r in runs]), format_summary([r.test_collective for r in runs]),
            show(thesis[0]), show(thesis[1]), format_summary([max(r.val_collective) for r in runs]),
            format_summary([r.val_collective[-1] for r in runs]), f"{sent:,.0f}",
            *([f"{wire:,.0f}", f"{cell.get('wall_time_s', 0):,.0f}"] if processes else []),
            f"{cell['ring_allreduce_estimate_per_node_step']:,.0f}",
            f"{mean_std([r.consumed_from_inbox for r in runs])[0]:.2f}", routing_digest(runs),
        ])
        longest = max(runs, key=lambda r: len(r.steps))
        panels["node average"][c.name] = (longest.steps, [r.val_average for r in runs])
        panels["collective decision"][c.name] = (longest.steps, [r.val_collective for r in runs])
        points[c.name] = (sent, [r.test_collective for r in runs])
    unsupervised = chosen[0].unsupervised
    what = f"linear probes on {unsupervised} features, at the best validation stage" if unsupervised else (
        f"after {chosen[0].steps:,} steps per node")
    table = "2.3" if unsupervised else "2.2"
    where = f"; nodes spread over {processes} processes{oversubscribed()}" if processes else ""
    print(f"\nTable {table}{', ' + at[:-1] if at else ''}: test accuracy (%), {what}; mean ± std over "
          f"{seed_text(seeds)}{where}; thesis: CIFAR-10")
    print(format_table(["config", "average", "collective", "thesis avg", "thesis coll", "best val coll",
                        "final val coll", "bytes sent/node/step",
                        *(["wire bytes/node/step", "wall time (s)"] if processes else []),
                        "ring all-reduce of N replicas (estimate)/node/step", "from inbox", "routing"],
                       rows))
    _paired_table(store, at, chosen, seeds)
    if not unsupervised:
        _ordering_table(store, at, chosen, seeds)
    _steps_table(store, at, chosen, seeds, target)
    if ddp:
        ddp_report(store, ddp, seeds, max(processes, 1))
    for cell in ddp:  # what a DDP replica hands to all-reduce each step: its float32 gradients
        replicas = runs_of(store, cell, seeds)
        points[cell.rsplit("/", 1)[-1]] = (mean_std([r.hook_bytes_per_step for r in replicas])[0],
                                           [r.test_collective for r in replicas])
    png = root / at / (f"figure_table_2_3_{unsupervised}.png" if unsupervised else "figure_table_2_2.png")
    plot_panels(png, list(panels.items()), "steps per node", "validation accuracy (%)")
    plot_frontier(root / at / "accuracy_vs_bytes.png", points, "logical bytes sent per node per step (log)",
                  "collective test accuracy (%)", f"what each row sends and what it reaches ({seed_text(seeds)})")


def control_of(chosen: list[NetworkConfig]) -> NetworkConfig | None:
    """The row every other is compared with: the largest network whose nodes exchange nothing."""
    alone = [c for c in chosen if c.content == "none" and c.nodes > 1 and not c.average]
    return max(alone, key=lambda c: c.nodes) if alone else None


def _paired_table(store: Store, at: str, chosen: list[NetworkConfig], seeds: list[int]) -> None:
    """The orderings, paired by seed (mean [95% t-interval]): each row of the control's size against the
    control, node average and collective, and every row's collective decision against its node average."""
    control = control_of(chosen)
    base = runs_of(store, at + control.name, seeds) if control else None
    rows = []
    for c in chosen:
        if c.nodes == 1:
            continue
        runs = runs_of(store, at + c.name, seeds)
        versus = [paired_difference([getattr(r, m) for r in runs], [getattr(b, m) for b in base])
                  if base and c.nodes == control.nodes and c.name != control.name else None
                  for m in ("test_average", "test_collective")]  # fmt: skip
        gap = paired_difference([r.test_collective for r in runs], [r.test_average for r in runs])
        rows.append([c.name, *(d.format(1) if d else "-" for d in (*versus, gap))])
    if rows:
        print(f"\npaired by seed, mean [95% t-interval] over {seed_text(seeds)}: each row minus "
              f"{control.name if control else 'the row without communication'} (node average, collective), and "
              f"collective minus node average")
        print(format_table(["config", "average vs control", "collective vs control", "collective - average"], rows))


def _ordering_table(store: Store, at: str, chosen: list[NetworkConfig], seeds: list[int]) -> None:
    """The thesis' ordering of contents (labels > logits > features > none), tested where it is claimed: each
    content against the next one present at the control's size, paired by seed, beside the thesis' gaps."""
    control = control_of(chosen)
    present = sorted((c for c in chosen if control and c.nodes == control.nodes and not c.average),
                     key=lambda c: ORDER.index(c.content))
    rows = []
    for better, worse in itertools.pairwise(present):
        a, b = runs_of(store, at + better.name, seeds), runs_of(store, at + worse.name, seeds)
        thesis = [(THESIS.get(better.name, (None,) * 3)[i], THESIS.get(worse.name, (None,) * 3)[i]) for i in (0, 1)]
        rows.append([f"{better.content} - {worse.content}",
                     *(paired_difference([getattr(r, m) for r in a], [getattr(r, m) for r in b]).format(1)
                       for m in ("test_average", "test_collective")),
                     *("-" if None in pair else f"{pair[0] - pair[1]:+.1f}" for pair in thesis)])
    if rows:
        print(f"\nthe thesis' ordering of contents (labels > logits > features > none), {control.nodes} nodes: each "
              f"content minus the next, paired by seed, mean [95% t-interval] over {seed_text(seeds)}")
        print(format_table(["contents", "average", "collective", "thesis avg", "thesis coll"], rows))


def _steps_table(store: Store, at: str, chosen: list[NetworkConfig], seeds: list[int], thesis_target: float) -> None:
    """Steps per node to the first sustained validation crossing (``benchmarks.protocol``) of the headline
    targets (the highest node-average and collective accuracy the row without communication holds on every
    seed), with paired speedups over that row, and of ``--target-accuracy`` (the thesis' 85%)."""
    runs = {c.name: runs_of(store, at + c.name, seeds) for c in chosen}
    control = control_of(chosen)
    curves = {"average": lambda r: r.val_average, "collective": lambda r: r.val_collective}
    targets = {m: held_target([curve(r) for r in runs[control.name]]) for m, curve in curves.items()} if control else {}
    base = {m: [crossing(r.steps, curves[m](r), t) for r in runs[control.name]] for m, t in targets.items()}
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
                for curve in curves.values()]
        rows.append([*row, f"{THESIS[c.name][2]:,}" if THESIS.get(c.name, (0, 0, 0))[2] else "-"])
    heads = {m: f"{t:.2f}%" for m, t in targets.items()} or dict.fromkeys(curves, "-")
    print(f"\nsteps per node to the first sustained validation crossing ({SUSTAIN} evaluations in a row) of the "
          f"targets {control.name if control else 'no row without communication'} holds on every seed (node average "
          f"{heads['average']}, collective {heads['collective']}), speedups paired by seed over it [95% t-interval]; "
          f"and of {thesis_target:g}% (thesis: 85% on CIFAR-10, test)")
    print(format_table(["config", "average", "speedup", "collective", "speedup", f"average to {thesis_target:g}%",
                        f"collective to {thesis_target:g}%", "thesis"], rows))


def oversubscribed() -> str:
    """A note when this machine runs more of the group's processes than it has cores: its wall times then include
    the processes' wait for a core."""
    local, cores = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), len(os.sched_getaffinity(0))
    return f" ({local} of them on this machine's {cores} cores: oversubscribed)" if local > cores else ""


def routing_digest(runs: list[NetworkResult]) -> str:
    """Eight hex digits for the routing of every seed (who sent what to whom, what each node trained on): the
    same in the simulator and on any number of processes."""
    return hashlib.blake2b("".join(r.routing for r in runs).encode(), digest_size=4).hexdigest()


def ddp_report(store: Store, cells: list[str], seeds: list[int], processes: int) -> None:
    """The DDP baseline: accuracy, what its hook handed to all-reduce, the ring's wire estimate, wall time."""
    rows = []
    for cell in cells:
        runs = runs_of(store, cell, seeds)
        hook = mean_std([r.hook_bytes_per_step for r in runs])[0]
        rows.append([cell, format_summary([r.test_average for r in runs]), f"{hook:,.0f}",
                     f"{2 * (processes - 1) / processes * hook:,.0f}",
                     f"{store.data['cells'][cell].get('wall_time_s', 0):,.0f}"])
    print(f"\nBaseline: one DDP replica per process ({processes}){oversubscribed()}, each on the union of its "
          f"nodes' shards; test accuracy (%), mean ± std over {seed_text(seeds)}")
    print(format_table(["config", "accuracy", "handed to all-reduce (hook) bytes/process/step",
                        "ring all-reduce wire 2(P-1)/P x hook bytes/process/step", "wall time (s)"], rows))


def sweep_report(store: Store, swept, chosen, seeds: list[int], root: Path) -> None:
    """The collective and the node-average test accuracy of every configuration against the swept value."""
    name, _, values = swept
    texts = [t for t, _ in values]
    names = [c.name for c in chosen[0][2]]  # the baseline's rows are left out of the sweep
    for metric, what, suffix in (("test_collective", "collective", ""), ("test_average", "node-average", "_average")):
        lines = {n: [[getattr(r, metric) for r in runs_of(store, f"{name}={t}/{n}", seeds)] for t in texts]
                 for n in names}
        print(f"\nSweep over {name}: {what} test accuracy (%), mean ± std over {seed_text(seeds)}")
        print(format_table([name, *names], [[t, *(format_summary(lines[n][i]) for n in names)]
                                            for i, t in enumerate(texts)]))
        plot_sweep(root / f"sweep_{name}{suffix}.png", name, texts, lines, f"{what} test accuracy (%)")
