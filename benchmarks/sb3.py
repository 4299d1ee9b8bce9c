"""Train a Stable-Baselines3 agent on any of our envs: ``python -m benchmarks.sb3 --env network``.

PPO and A2C run on every env; SAC and TD3 on the teacher/student env, whose teacher acts with a Box of
scores. The recipe behind it is three lines (``trainers/sb3.py``): build the PettingZoo parallel env, hide the
agents that follow a fixed rule (``envs.base.Scripted``; here the student of ``teacher_student``, which
always takes the update), and call ``trainers.sb3.train``, which goes through SuperSuit with a seeded
vector env. Every exposed agent shares one MLP policy.

The results file is the benchmarks' own (``benchmarks.store``): one cell per algorithm (``flag=value/`` under
``--sweep``), one run per seed with every logged row; locked while a run writes it, refused when it holds another
configuration. A finished run is never retrained. An interrupted run restarts from its first step when the
command is run again (its TensorBoard folder cleared first): SB3 saves a model and a replay buffer, not the
envs' and data order's state, so a continued run would not equal an uninterrupted one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from benchmarks.cli import ArgumentParser, UsageError, add_common, add_data, variants
from benchmarks.harness import Progress, device_of, format_table, run_cli
from benchmarks.store import Store, prefix, preflight
from envs.data import DATASETS, load_splits
from trainers.files import write_atomic

ENVS = ("language", "teacher_student", "network")
DEFAULT_DATASET = {"language": "mnist", "teacher_student": "mnist", "network": "fashion-mnist"}
ON_POLICY, OFF_POLICY = ("ppo", "a2c"), ("sac", "td3")  # SAC and TD3 need a Box action: the teacher's scores
QUICK = {"timesteps": 256, "n_steps": 32, "batch_size": 32, "learning_starts": 32, "episode_steps": 16,
         "quick_teacher": True, "seeds": [0]}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.sb3", description=__doc__.split("\n")[0])
    p.add_argument("--env", required=True, choices=ENVS, help="which of our envs (required)")
    p.option("--algo", "ppo", "SB3 algorithm (sac and td3 need a Box action: --env teacher_student)",
             choices=(*ON_POLICY, *OFF_POLICY))
    p.option("--timesteps", 20_000, "agent-steps (all exposed agents count)", type=int)
    p.option("--n-steps", 256, "PPO/A2C: rollout length per agent between updates", type=int,
             read_with={"algo": ON_POLICY})
    p.option("--batch-size", 64, "PPO's minibatch (a divisor of n-steps x agents); SAC/TD3's", type=int,
             read_with={"algo": ("ppo", *OFF_POLICY)})
    p.option("--learning-starts", 100, "SAC/TD3: random steps before the first update", type=int,
             read_with={"algo": OFF_POLICY})
    p.option("--episode-steps", 100, "env steps per episode", type=int)
    p.option("--nodes", 4, "network env: nodes (agents)", type=int, read_with={"env": ("network",)})
    with p.group("data"):
        add_data(p, None, default_text="mnist; fashion-mnist for network", choices=list(DATASETS))
    p.option("--teacher-cache", "checkpoints/teachers", "teacher_student: cached teachers",
             read_with={"env": ("teacher_student",)})
    p.option("--quick-teacher", False, "teacher_student: a one-epoch teacher if none cached", action="store_true",
             read_with={"env": ("teacher_student",)})
    p.option("--save", None, "folder of the trained models: <save>/[<flag>=<value>/]<algo>/seed<k>.zip",
             default_text="checkpoints/sb3/<out name>")
    p.fixed = {"env", "algo", "dataset", "teacher-cache", "quick-teacher", "save"}
    add_common(p, out="results/sb3-<env>-<algo>[-quick].json", quick="1 (seed 0)|256 agent-steps, rollouts of 32, "
               "a one-epoch teacher")
    return p


def make_env(args, seed: int):
    """The env of ``--env``, built from the dataset as the chapter's benchmark builds it."""
    dataset = args.dataset or DEFAULT_DATASET[args.env]
    if args.env == "language":
        from envs.language import parallel_env

        return parallel_env(dataset=dataset, data_dir=args.data_dir, max_cycles=args.episode_steps, seed=seed)
    splits = load_splits(dataset, args.data_dir)
    if args.env == "network":
        from envs.network import parallel_env

        return parallel_env(splits.train.images, splits.train.labels, splits.val.images, splits.val.labels,
                            shape=splits.shape, nodes=args.nodes, max_cycles=args.episode_steps)
    from envs.base import Scripted
    from envs.teacher_student import parallel_env
    from trainers.teacher_student.teachers import QUICK_TEACHER, TeacherConfig, load_or_train_teachers, predict

    config = QUICK_TEACHER if args.quick_teacher else TeacherConfig()
    with Progress(f"teacher (seed {seed}, trained once, cached in {args.teacher_cache})") as progress:
        teachers = load_or_train_teachers(splits, [seed], config, Path(args.teacher_cache), events=progress)
    env = parallel_env(splits.train.images, splits.train.labels, predict(teachers[seed], splits.train.images),
                       splits.val.images, splits.val.labels, max_cycles=args.episode_steps)
    return Scripted(env, {"student": lambda observation: 1})


def _check(v, seeds: list[int]) -> None:
    """Every value checked before anything trains, each naming its flag."""
    for flag, low in (("timesteps", 1), ("episode_steps", 1), ("batch_size", 1), ("n_steps", 2),
                      ("learning_starts", 0), ("nodes", 2)):
        if getattr(v, flag) < low:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= {low}, got {getattr(v, flag)}")
    if v.algo in OFF_POLICY and v.env != "teacher_student":
        raise UsageError(f"--algo {v.algo} on --env {v.env}: {v.algo.upper()} needs a Box action space; this env's "
                         f"actions are discrete: use {' or '.join(ON_POLICY)}")
    if max(seeds) >= 2**32:
        raise UsageError(f"--seeds must be below 2**32 (SB3 seeds numpy with them), got {max(seeds)}")
    agents = {"network": v.nodes, "language": 2, "teacher_student": 1}[v.env]
    if v.algo == "ppo" and (v.n_steps * agents) % v.batch_size:
        raise UsageError(f"--batch-size {v.batch_size} must divide --n-steps x agents = {v.n_steps} x {agents} "
                         f"(PPO's minibatches split each rollout)")


def _identity(args) -> dict:
    """What makes two runs comparable: the flags this env and algorithm read."""
    keys = ["env", "algo", "timesteps", "episode_steps", "dataset"]
    keys += ["n_steps"] if args.algo in ON_POLICY else ["learning_starts"]
    keys += ["batch_size"] if args.algo != "a2c" else []
    keys += {"network": ["nodes"], "teacher_student": ["quick_teacher"]}.get(args.env, [])
    return {k: getattr(args, k) or DEFAULT_DATASET[args.env] if k == "dataset" else getattr(args, k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse(argv, QUICK)
    seeds = args.seeds if args.seeds is not None else [0]
    device = device_of(args)
    chosen = list(variants(parser, args))
    for _, v in chosen:
        _check(v, seeds)
    try:
        from trainers import sb3 as rl
    except ImportError as e:
        raise UsageError(f"{e.name} is not installed; pip install -e '.[rl]'") from None
    out = Path(args.out or f"results/sb3-{args.env}-{args.algo}{'-quick' if args.quick else ''}.json")
    save, root = Path(args.save or f"checkpoints/sb3/{out.stem}"), Path(args.logdir) / out.stem
    preflight([(save, "--save"), (root, "--logdir")])
    final = {}
    with Store(out, "sb3", _identity(args), parser.sweep_flag(args.sweep)) as store:
        for label, v in chosen:
            for k in seeds:
                cell = prefix(label) + v.algo
                if not store.done(cell, k):
                    store.lacks(f"run {cell} seed {k}")
                    _train(rl, v, k, device, store, cell, save, root)
                _run_table(rl, v, cell, k, store.runs(cell)[k])
                final[(label, k)] = store.runs(cell)[k]["final_reward"]
        store.save()
    if len(final) > 1:
        print(f"\nmean episode reward of the last rollout, per {'variant and ' if args.sweep else ''}seed")
        rows = [[label or args.algo, k, "-" if r is None else f"{r:.4g}"] for (label, k), r in final.items()]
        print(format_table(["variant" if args.sweep else "algo", "seed", "rollout/ep_rew_mean"], rows))
    print(f"\nresults: {out}   models: {save}   TensorBoard: tensorboard --logdir {root}")
    return 0


def _train(rl, args, seed: int, device, store: Store, cell: str, save: Path, root: Path) -> None:
    """One run (a cell and seed): its TensorBoard folder starts empty, its model and rows are written when it
    ends."""
    env = make_env(args, seed)
    agents = len(env.possible_agents)
    if args.algo in ON_POLICY:
        kwargs = {"n_steps": args.n_steps, **({"batch_size": args.batch_size} if args.algo == "ppo" else {})}
    else:  # the replay buffer holds the whole run, no more
        kwargs = {"batch_size": args.batch_size, "learning_starts": args.learning_starts,
                  "buffer_size": min(args.timesteps, 1_000_000)}
    logdir = root / cell / f"seed{seed}"
    shutil.rmtree(logdir, ignore_errors=True)  # an interrupted run's curves: the run restarts from step 0
    started = time.time()
    model, rows = rl.train(env, args.algo, args.timesteps, seed, logdir, device=str(device), **kwargs)
    model_file = save / cell / f"seed{seed}.zip"
    model_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(model_file, lambda tmp: model.save(tmp))
    rewards = [r["rollout/ep_rew_mean"] for r in rows if "rollout/ep_rew_mean" in r]
    store.add(cell, seed, {"agents": agents, "device": str(device), "timesteps": model.num_timesteps,
                           "wall_time_s": time.time() - started, "final_reward": rewards[-1] if rewards else None,
                           "model": str(model_file), "rows": rows})


def _run_table(rl, args, cell: str, seed: int, run: dict) -> None:
    """A run's rollouts, each with the losses of the update that followed it, from its record."""
    keys = ("time/total_timesteps", "rollout/ep_rew_mean", *rl.COLUMNS[args.algo])
    rows = [[f"{r[k]:.4g}" if k in r else "-" for k in keys] for r in rl.updates(run["rows"], args.algo)]  # -: none
    print(f"\n{args.algo.upper()} on {args.env} ({run['agents']} agent(s) sharing one policy), seed {seed}"
          f"{', ' + cell.rsplit('/', 1)[0] if '/' in cell else ''}")
    print(format_table(keys, rows))


if __name__ == "__main__":
    run_cli(main, interrupted="finished runs are kept in --out; the interrupted run restarts from its first step "
            "when you run the command again")
