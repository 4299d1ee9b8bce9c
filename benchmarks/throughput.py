"""How fast the batched trainers run, as a fraction of this machine's peak: ``python -m benchmarks.throughput``.

One run prints three tables, all timed in the same minutes:

- **peak**: a 2048x2048 fp32 matmul and a large convolution, the machine's best GFLOP/s on this arithmetic,
  and the memory bandwidth of a large copy;
- **network**: node-steps per second of the batched node trainer (every node one part of a stacked model:
  grouped channels-last convolutions, batched matmuls, one Adam) and of a per-node Python loop (N
  ``nn.Module``s, N Adams) on the same minibatches, each as GFLOP/s and fraction of the matmul peak. A
  node-step is one forward, backward and Adam step of one node on one minibatch (FLOPs counted by
  ``torch.utils.flop_counter`` on one node); routing is left out;
- **language**: run-steps per second of the language trainer's population (``--runs``) and its fraction of
  peak (FLOPs of one run's step, counted the same way).

``--scale`` adds how a whole network step (routing included) grows with the number of nodes (one timing of 3
steps per row: a 1,000-node step takes seconds). Every other row is the best of 3 timings. Results go
atomically to ``--out``.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from agents.network import MODELS, node_model, stack
from benchmarks.cli import ArgumentParser, UsageError, add_sweep, variants
from benchmarks.harness import device_of, format_table, parse_ints, parse_list, run_cli
from benchmarks.store import Lock, commit, now, preflight, save_json, version
from envs.data import Split, Splits
from trainers.base import adam

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)
SHAPES = {"dcgan-small": MNIST, "dcgan": CIFAR, "dcgan-bn": CIFAR, "dcgan-bn-wide": CIFAR, "mlp": MNIST}  # their data
REPEATS = 3  # timings per row; the best counts
DEFAULT = "dcgan-small"  # the network benchmark's model on the 28x28 datasets measured here


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    p.option("--nodes", "1,10,20", "comma-separated node counts")
    p.option("--models", "dcgan-small,dcgan", f"comma-separated node models from {','.join(SHAPES)}")
    p.option("--runs", "1,4,20", "comma-separated language population sizes (empty: no language rows)")
    p.option("--scale", "", "comma-separated node counts of whole network steps, e.g. 10,100,1000 (ring k = 2; "
             "dcgan-small and mlp)", default_text="none")
    p.option("--batch-size", 32, "minibatch of every node", type=int)
    p.option("--steps", 20, "timed steps per measurement (after 3 warm-up steps; best of 3)", type=int)
    p.empty_ok = {"runs", "scale"}
    p.option("--device", "auto", "where to measure: auto is cuda when available, else cpu",
             choices=["auto", "cpu", "cuda", "mps"])
    add_sweep(p)
    p.option("--out", "results/throughput.json", "results JSON")
    return p


def steppers(model: str, nodes: int, batch_size: int, seed: int = 0,
             device: torch.device | str = "cpu") -> tuple[Callable, Callable]:
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
    batched_opt = adam(parts.parameters(), device)
    loop_opts = [adam(m.parameters(), device) for m in models]

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


def flops(step: Callable[[], None]) -> float:
    """Floating-point operations of one call of ``step`` (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def per_s(step: Callable[[], None], steps: int, device: torch.device, repeats: int = 1) -> float:
    """Calls of ``step`` per second, after 3 warm-up calls; on a GPU, after its queued work finished. With
    ``repeats``, the best of that many timings (this shared VM's speed drifts by up to 30% within minutes)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = max(best, steps / (time.perf_counter() - start))
    return best


def peak(device: torch.device, seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s of a 2048x2048 fp32 matmul and of a 3x3 convolution 64 -> 128 channels on 32x32 (batch 64,
    channels-last): the arithmetic the trainers do, at sizes that keep the vector units busy."""
    a, b = torch.rand(2048, 2048, device=device), torch.rand(2048, 2048, device=device)
    x = torch.rand(64, 64, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.rand(128, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    out = {}
    for name, fn, work in (("matmul", lambda: a @ b, 2 * 2048**3),
                           ("conv", lambda: F.conv2d(x, w, padding=1), 2 * 64 * 128 * 32 * 32 * 64 * 9)):
        rate, steps = 0.0, 2
        while True:  # enough calls for ``seconds``
            rate = per_s(fn, steps, device, REPEATS)
            if steps / rate >= seconds:
                break
            steps = max(steps * 2, int(seconds * rate) + 1)
        out[name] = rate * work / 1e9
    return out


def bandwidth(device: torch.device, mib: int = 256) -> float:
    """GB/s of copying a ``mib`` MiB tensor (read + write): what bounds a step whose weights, Adam state and
    activations outgrow the caches (networks of hundreds of nodes)."""
    src = torch.rand(mib * 2**18, device=device)
    dst = torch.empty_like(src)
    return per_s(lambda: dst.copy_(src), 5, device, REPEATS) * 2 * src.numel() * src.element_size() / 1e9


def language_stepper(runs: int, device: torch.device) -> Callable[[], None]:
    """One training step of a language population of ``runs`` runs (level both) on random 784-pixel views."""
    from trainers.language import LanguageConfig, LanguageTrainer

    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 784, generator=generator), torch.randint(0, 10, (n,), generator=generator))

    trainer = LanguageTrainer(LanguageConfig(), Splits(split(2000), split(200), split(200), shape=(1, 28, 28)),
                              [("both", s) for s in range(runs)], device=device)
    return trainer.train_step


def scale_row(model: str, nodes: int, batch_size: int, steps: int, device: torch.device) -> dict:
    """Seconds per whole network step (routing included) of ``nodes`` nodes on a ring (k = 2), and memory."""
    from trainers.network import NetworkConfig, NetworkTrainer

    generator = torch.Generator().manual_seed(0)
    n = max(6_000, 2 * nodes * batch_size)  # a step's cost does not depend on the shard sizes

    def split(count: int) -> Split:
        return Split(torch.rand(count, 784, generator=generator), torch.randint(0, 10, (count,), generator=generator))

    splits = Splits(split(n - n // 6), split(100), split(100), shape=(1, 28, 28))
    config = NetworkConfig(nodes=nodes, neighbours=2, content="labels", model=model, batch_size=batch_size)
    trainer = NetworkTrainer(config, splits, [0], device=device)
    rate = per_s(trainer.train_step, steps, device)
    state = sum(t.numel() * t.element_size() for t in _tensors(trainer.state_dict()))
    return {"model": model, "n_nodes": nodes, "s_per_step": 1 / rate, "node_steps_per_s": nodes * rate,
            "state_mb": state / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in _tensors(v)] if isinstance(value, list | tuple) else []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv)
    device = device_of(args)
    chosen = list(variants(parser, args))
    grids = [(label, v, *_grid(v)) for label, v in chosen]  # every value checked before anything is timed
    out = Path(args.out)
    preflight([(out.parent, "--out")])
    lock = Lock(out)  # a second timing on the same --out is refused, not overwritten at the end
    try:
        _measure(args, out, device, grids)
    finally:
        lock.release()
    return 0


def _measure(args, out: Path, device: torch.device, grids: list) -> None:
    machine, memory = peak(device), bandwidth(device)
    print(f"peak here: matmul {machine['matmul']:.1f} GFLOP/s, convolution {machine['conv']:.1f} GFLOP/s, memory "
          f"{memory:.1f} GB/s ({torch.get_num_threads()} threads, {device})", flush=True)
    top = machine["matmul"]
    rows, language, scale = [], [], []
    for label, v, models, nodes, runs, scales in grids:
        for model in models:
            work = flops(steppers(model, 1, v.batch_size)[1])  # one node-step
            for n in nodes:
                batched, loop = steppers(model, n, v.batch_size, device=device)
                a, b = n * per_s(batched, v.steps, device, REPEATS), n * per_s(loop, v.steps, device, REPEATS)
                rows.append({"variant": label, "model": model, "n_nodes": n, "batch_size": v.batch_size,
                             "batched_node_steps_per_s": a, "loop_node_steps_per_s": b, "ratio": a / b,
                             "gflop_per_node_step": work / 1e9, "batched_peak_fraction": a * work / 1e9 / top,
                             "loop_peak_fraction": b * work / 1e9 / top, "default": model == DEFAULT})
                print(f"{label + ' ' if label else ''}{model} N={n}: batched {a:,.0f}, loop {b:,.0f} node-steps/s "
                      f"({a / b:.2f}x; {rows[-1]['batched_peak_fraction']:.0%} of peak)", flush=True)
        if runs:
            work = flops(language_stepper(1, device))
        for r in runs:
            rate = r * per_s(language_stepper(r, device), max(3, v.steps // 2), device, REPEATS)
            language.append({"variant": label, "runs": r, "run_steps_per_s": rate, "gflop_per_run_step": work / 1e9,
                             "peak_fraction": rate * work / 1e9 / top})
            print(f"{label + ' ' if label else ''}language runs={r}: {rate:.1f} run-steps/s "
                  f"({language[-1]['peak_fraction']:.0%} of peak)", flush=True)
        for model in ("dcgan-small", "mlp") if scales else ():
            for n in scales:
                scale.append({"variant": label, **scale_row(model, n, v.batch_size, 3, device)})
                print(f"scale {model} N={n}: {scale[-1]['s_per_step']:.3f} s/step", flush=True)
    save_json(out, {"batch_size": args.batch_size, "threads": torch.get_num_threads(), "device": str(device),
                    "sweep": args.sweep, "peak_gflops": machine, "memory_gb_per_s": memory, "rows": rows,
                    "language": language, "scale": scale, "argv": sys.argv, "version": version(),
                    "commit": commit(), "ended": now()})
    _print(args, machine, memory, rows, language, scale)


def _print(args, machine: dict, memory: float, rows: list, language: list, scale: list) -> None:
    tag = ["variant"] if args.sweep else []
    print(f"\npeak: matmul 2048^2 {machine['matmul']:.1f} GFLOP/s, convolution {machine['conv']:.1f} GFLOP/s, memory "
          f"copy {memory:.1f} GB/s; fractions below are of the matmul peak")
    print(format_table(
        [*tag, "model", "nodes", "GFLOP/node-step", "batched node-steps/s", "batched GFLOP/s", "of peak",
         "loop node-steps/s", "loop of peak", "ratio"],
        [[*([r["variant"]] if args.sweep else []), r["model"] + (" (default)" if r["default"] else ""), r["n_nodes"],
          f"{r['gflop_per_node_step']:.4f}", f"{r['batched_node_steps_per_s']:,.0f}",
          f"{r['batched_node_steps_per_s'] * r['gflop_per_node_step']:.1f}", f"{r['batched_peak_fraction']:.0%}",
          f"{r['loop_node_steps_per_s']:,.0f}", f"{r['loop_peak_fraction']:.0%}", f"{r['ratio']:.2f}x"] for r in rows],
    ))
    if language:
        print(f"\nlanguage population (level both, batch 64): {language[0]['gflop_per_run_step']:.3f} GFLOP per "
              "run-step")
        print(format_table([*tag, "runs", "run-steps/s", "GFLOP/s", "of peak"],
                           [[*([r["variant"]] if args.sweep else []), r["runs"], f"{r['run_steps_per_s']:.1f}",
                             f"{r['run_steps_per_s'] * r['gflop_per_run_step']:.1f}", f"{r['peak_fraction']:.0%}"]
                            for r in language]))
    if scale:
        print("\nwhole network steps (routing included), ring k = 2, labels")
        print(format_table([*tag, "model", "nodes", "s/step", "node-steps/s", "state MB", "peak RSS MB"],
                           [[*([r["variant"]] if args.sweep else []), r["model"], r["n_nodes"],
                             f"{r['s_per_step']:.3f}", f"{r['node_steps_per_s']:,.0f}", f"{r['state_mb']:,.0f}",
                             f"{r['peak_rss_mb']:,.0f}"]
                            for r in scale]))
    print(f"\nresults: {args.out}   (batch {args.batch_size}, {torch.get_num_threads()} threads)")


def _grid(args) -> tuple[list[str], list[int], list[int], list[int]]:
    """The models, node counts, population sizes and scale node counts to time, checked."""
    for flag in ("batch_size", "steps"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    optional = lambda text, flag: parse_ints(text, flag) if text.strip() else []  # noqa: E731 (empty: no rows)
    return (parse_list(args.models, SHAPES, "--models"), parse_ints(args.nodes, "--nodes"),
            optional(args.runs, "--runs"), optional(args.scale, "--scale"))


if __name__ == "__main__":
    run_cli(main, interrupted="nothing was saved (results are written when every measurement is done)")
