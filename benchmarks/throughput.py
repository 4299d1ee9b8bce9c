"""Node-steps per second of the batched node trainer vs a per-node Python loop: ``python -m benchmarks.throughput``.

Both train the same node classifiers (built from the same seed) on the same minibatches: the batched
form runs every node as one stacked model (``agents.network.stack``: grouped channels-last
convolutions, batched matmuls, one Adam), the loop runs N ordinary ``nn.Module``s with N Adams, one
after the other. A node-step is one forward, backward and Adam step of one node on one minibatch;
routing is left out of both. Results go atomically to ``--out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.network import MODELS, node_model, stack
from benchmarks.cli import ArgumentParser, UsageError, add_sweep, variants
from benchmarks.harness import device_of, format_table, run_cli
from benchmarks.store import save_json

SHAPES = {"dcgan-small": (1, 28, 28), "dcgan": (3, 32, 32), "mlp": (1, 28, 28)}  # what each model is for
DEFAULT = "dcgan-small"  # the network benchmark's model on the 28x28 datasets measured here


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    p.option("--nodes", "1,10,20", "comma-separated node counts")
    p.option("--models", ",".join(MODELS), "comma-separated node models")
    p.option("--batch-size", 32, "minibatch of every node", type=int)
    p.option("--steps", 20, "timed steps per measurement (after 3 warm-up steps)", type=int)
    p.option("--device", "auto", "where to measure: auto is cuda when available, else cpu",
             choices=["auto", "cpu", "cuda", "mps"])  # fmt: skip
    add_sweep(p)
    p.option("--out", "results/throughput.json", "results JSON")
    return p


def steppers(model: str, nodes: int, batch_size: int, seed: int = 0,
             device: torch.device | str = "cpu") -> tuple[Callable, Callable]:  # fmt: skip
    """(batched step, loop step) over the same ``nodes`` freshly initialised classifiers and minibatches."""
    shape = SHAPES[model]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = [node_model("classifier", shape, MODELS[model]) for _ in range(nodes)]
        images = torch.rand(nodes, batch_size, *shape)
        labels = torch.randint(0, 10, (nodes, batch_size))
    models = [m.to(device) for m in models]
    images, labels = images.to(device), labels.to(device)
    parts = stack(models)
    batched_opt = torch.optim.Adam(parts.parameters())
    loop_opts = [torch.optim.Adam(m.parameters()) for m in models]

    def batched() -> None:
        logits = parts["head"](parts["trunk"](images))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / batch_size
        batched_opt.zero_grad(set_to_none=True)
        loss.backward()
        batched_opt.step()

    def loop() -> None:
        for m, opt, x, y in zip(models, loop_opts, images, labels, strict=True):
            loss = F.cross_entropy(m["head"](m["trunk"](x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return batched, loop


def node_steps_per_s(step: Callable[[], None], nodes: int, steps: int, device: torch.device) -> float:
    """Timed after 3 warm-up steps; on a GPU, after its queued work finished (kernels run asynchronously)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return nodes * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv)
    device = device_of(args)
    chosen = list(variants(parser, args))
    grids = [(label, v, *_grid(v)) for label, v in chosen]  # every value checked before anything is timed
    rows = []
    for label, v, models, nodes in grids:
        for model in models:
            for n in nodes:
                batched, loop = steppers(model, n, v.batch_size, device=device)
                a, b = node_steps_per_s(batched, n, v.steps, device), node_steps_per_s(loop, n, v.steps, device)
                rows.append({"variant": label, "model": model, "n_nodes": n, "batch_size": v.batch_size,
                             "batched_node_steps_per_s": a, "loop_node_steps_per_s": b, "ratio": a / b,
                             "default": model == DEFAULT})  # fmt: skip
                print(f"{label + ' ' if label else ''}{model} N={n}: batched {a:,.0f}, loop {b:,.0f} node-steps/s "
                      f"({a / b:.2f}x)", flush=True)  # fmt: skip
    save_json(Path(args.out), {"batch_size": args.batch_size, "threads": torch.get_num_threads(),
                               "device": str(device), "sweep": args.sweep, "rows": rows})  # fmt: skip
    print()
    print(format_table(
        [*(["variant"] if args.sweep else []), "model", "nodes", "batched node-steps/s", "loop node-steps/s", "ratio"],
        [[*([r["variant"]] if args.sweep else []), r["model"] + (" (default)" if r["default"] else ""), r["n_nodes"],
          f"{r['batched_node_steps_per_s']:,.0f}", f"{r['loop_node_steps_per_s']:,.0f}", f"{r['ratio']:.2f}x"]
         for r in rows],
    ))  # fmt: skip
    print(f"\nresults: {args.out}   (batch {args.batch_size}, {torch.get_num_threads()} threads, {device})")
    return 0


def _grid(args) -> tuple[list[str], list[int]]:
    """The models and node counts to time, checked."""
    try:
        nodes = sorted({int(x) for x in args.nodes.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--nodes must be comma-separated integers, got {args.nodes!r}") from None
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not nodes or nodes[0] < 1:
        raise UsageError(f"--nodes must be integers >= 1, got {args.nodes!r}")
    if not models or any(m not in MODELS for m in models):
        raise UsageError(f"unknown model in {args.models!r}; choose from {','.join(MODELS)}")
    if args.batch_size < 1 or args.steps < 1:
        raise UsageError("--batch-size and --steps must be >= 1")
    return models, nodes


if __name__ == "__main__":
    run_cli(main, interrupted="nothing was saved (results are written when every measurement is done)")
