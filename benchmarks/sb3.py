"""Train a Stable-Baselines3 agent on any of our envs: ``python -m benchmarks.sb3 --env network``.

PPO and A2C run on every env; SAC and TD3 on the teacher/student env, whose teacher acts with a Box of
scores. The recipe behind it is three lines (``trainers/sb3.py``): build the PettingZoo parallel env, hide the
agents that follow a fixed rule (``envs.base.Scripted``; here the student of ``teacher_student``, which
always takes the update), and call ``trainers.sb3.train``, which goes through SuperSuit with a seeded
vector env. Every exposed agent shares one MLP policy. TensorBoard scalars go to
``<logdir>/sb3/<env>/<algo>-seed<k>``, the model to ``--save`` and the logged rows to ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.cli import ArgumentParser, UsageError, add_sweep, variants
from benchmarks.harness import Progress, device_of, format_table, run_cli
from benchmarks.store import save_json
from envs.data import DATASETS, load_splits

ENVS = ("language", "teacher_student", "network")
DEFAULT_DATASET = {"language": "mnist", "teacher_student": "mnist", "network": "fashion-mnist"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.sb3", description=__doc__.split("\n")[0])
    p.add_argument("--env", required=True, choices=ENVS, help="which of our envs (required)")
    p.option("--algo", "ppo", "SB3 algorithm (sac and td3 need a Box action: --env teacher_student)",
             choices=("ppo", "a2c", "sac", "td3"))  # fmt: skip
    p.option("--timesteps", 20_000, "agent-steps (all exposed agents count)", type=int)
    p.option("--n-steps", 256, "rollout length per agent between updates", type=int)
    p.option("--batch-size", 64, "PPO's minibatch (a divisor of n-steps x agents); SAC/TD3's", type=int)
    p.option("--learning-starts", 100, "SAC/TD3: random steps before the first update", type=int)
    p.option("--seed", 0, "seed of the policy, the envs and their data order", type=int)
    p.option("--episode-steps", 100, "env steps per episode", type=int)
    p.option("--nodes", 4, "network env: nodes (agents)", type=int)
    p.option("--dataset", None, "dataset", default_text="mnist; fashion-mnist for network", choices=list(DATASETS))
    p.option("--data-dir", None, "dataset root", default_text="$COMMCHANNELS_DATA, else a per-user cache")
    p.option("--teacher-cache", "checkpoints/teachers", "teacher_student: cached teachers")
    p.option("--quick-teacher", False, "teacher_student: a one-epoch teacher if none cached", action="store_true")
    p.option("--device", "auto", "where the policy trains: auto is cuda when available, else cpu",
             choices=["auto", "cpu", "cuda", "mps"])  # fmt: skip
    add_sweep(p)
    p.option("--logdir", "runs", "TensorBoard root")
    p.option("--out", None, "logged rows as JSON", default_text="results/sb3-<env>-<algo>-seed<k>.json")
    p.option("--save", None, "model zip", default_text="checkpoints/sb3/<env>-<algo>-seed<k>.zip")
    return p


def make_env(args):
    """The env of ``--env``, built from the dataset as the chapter's benchmark builds it."""
    dataset = args.dataset or DEFAULT_DATASET[args.env]
    if args.env == "language":
        from envs.language import parallel_env

        return parallel_env(dataset=dataset, data_dir=args.data_dir, max_cycles=args.episode_steps, seed=args.seed)
    splits = load_splits(dataset, args.data_dir)
    if args.env == "network":
        from envs.network import parallel_env

        if args.nodes < 2:
            raise UsageError(f"--nodes must be >= 2 for agents to communicate, got {args.nodes}")
        return parallel_env(splits.train.images, splits.train.labels, splits.val.images, splits.val.labels,
                            shape=splits.shape, nodes=args.nodes, max_cycles=args.episode_steps)  # fmt: skip
    from envs.base import Scripted
    from envs.teacher_student import parallel_env
    from trainers.teacher import QUICK_TEACHER, TeacherConfig, load_or_train_teachers, predict

    config = QUICK_TEACHER if args.quick_teacher else TeacherConfig()
    with Progress(f"teacher (seed {args.seed}, trained once, cached in {args.teacher_cache})") as progress:
        teachers = load_or_train_teachers(splits, [args.seed], config, Path(args.teacher_cache), events=progress)
    teacher = teachers[args.seed]
    env = parallel_env(splits.train.images, splits.train.labels, predict(teacher, splits.train.images),
                       splits.val.images, splits.val.labels, max_cycles=args.episode_steps)  # fmt: skip
    return Scripted(env, {"student": lambda observation: 1})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv)
    device = device_of(args)
    chosen = list(variants(parser, args))
    for _, v in chosen:
        if min(v.timesteps, v.episode_steps, v.batch_size) < 1 or v.n_steps < 2 or v.learning_starts < 0:
            raise UsageError("--timesteps, --episode-steps and --batch-size must be >= 1, --n-steps >= 2 "
                             "and --learning-starts >= 0")  # fmt: skip
        if not 0 <= v.seed < 2**32:
            raise UsageError(f"--seed must be in [0, 2**32 - 1] (SB3 seeds numpy with it), got {v.seed}")
    try:
        from trainers import sb3 as rl
    except ImportError as e:
        raise UsageError(f"{e.name} is not installed; pip install -e '.[rl]'") from None
    final = {label: _train(rl, v, device, label) for label, v in chosen}
    if len(final) > 1:
        print(f"\nSweep over {chosen[0][0].split('=')[0]}: mean episode reward of the last rollout")
        rows = [[k.split("=", 1)[1], f"{r:.4g}"] for k, r in final.items()]
        print(format_table(["value", "rollout/ep_rew_mean"], rows))
    return 0


def _train(rl, args, device, label: str) -> float:
    """One training (one value of a sweep: ``label``); writes its model and rows, prints its table."""
    name = f"{args.algo}-seed{args.seed}"
    suffix = f"-{label}" if label and (args.out or args.save) else ""
    env = make_env(args)
    agents = len(env.possible_agents)
    started = time.time()
    if args.algo in rl.ON_POLICY:
        kwargs = {"n_steps": args.n_steps, **({"batch_size": args.batch_size} if args.algo == "ppo" else {})}
    else:  # the replay buffer holds the whole run, no more
        kwargs = {"batch_size": args.batch_size, "learning_starts": args.learning_starts,
                  "buffer_size": min(args.timesteps, 1_000_000)}  # fmt: skip
    logdir = Path(args.logdir) / "sb3" / args.env / (f"{label}/{name}" if label else name)
    try:
        model, rows = rl.train(env, args.algo, args.timesteps, args.seed, logdir, device=str(device), **kwargs)
    except ValueError as e:  # an algorithm that does not fit the env's actions, found before any training
        raise UsageError(f"--algo {args.algo} on --env {args.env}: {e}") from None
    seconds = time.time() - started
    tag = f"{label.replace('=', '-')}-" if label and not (args.out or args.save) else ""
    save = Path(args.save or f"checkpoints/sb3/{args.env}-{tag}{name}.zip")
    save = save.with_name(save.stem + suffix + save.suffix)
    save.parent.mkdir(parents=True, exist_ok=True)
    model.save(save)
    out = Path(args.out or f"results/sb3-{args.env}-{tag}{name}.json")
    out = out.with_name(out.stem + suffix + out.suffix)
    save_json(out, {"env": args.env, "algo": args.algo, "seed": args.seed, "agents": agents, "device": str(device),
                    "variant": label, "timesteps": model.num_timesteps, "wall_time_s": seconds,
                    "rows": rows})  # fmt: skip
    keys = ("time/total_timesteps", "rollout/ep_rew_mean", *rl.COLUMNS[args.algo])
    table = [[f"{r[k]:.4g}" if k in r else "-" for k in keys] for r in rl.updates(rows, args.algo)]  # -: no update yet
    print(f"\n{args.algo.upper()} on {args.env} ({agents} agent(s) sharing one policy), seed {args.seed}"
          f"{', ' + label if label else ''}")  # fmt: skip
    print(format_table(keys, table))
    print(f"\nresults: {out}   model: {save}   TensorBoard: tensorboard --logdir {Path(args.logdir) / 'sb3'}   "
          f"wall time: {seconds:.0f} s")  # fmt: skip
    rewards = [r["rollout/ep_rew_mean"] for r in rows if "rollout/ep_rew_mean" in r]
    return rewards[-1] if rewards else float("nan")


if __name__ == "__main__":
    run_cli(main, interrupted="nothing was saved (model and results are written when training ends)")
