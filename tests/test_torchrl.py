"""torchrl's PettingZooWrapper and Collector (which steps envs under no_grad) run on every env, and the
envs that train inside keep training there."""

import warnings

import pytest
import torch

from tests.test_language_env import make as make_language
from tests.test_network_env import make_env as make_network
from tests.test_teacher_student_env import make as make_teacher_student


@pytest.mark.parametrize(
    ("make", "groups"),
    [(make_language, ["student", "teacher"]), (make_network, ["node"]),
     (make_teacher_student, ["student", "teacher"])],
    ids=["language", "network", "teacher_student"],
)
def test_a_torchrl_collector_runs_on_each_env(make, groups):
    from torchrl.collectors import Collector
    from torchrl.envs import PettingZooWrapper

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchrl's deprecation notices about its own defaults
        env = PettingZooWrapper(make(), categorical_actions=True, seed=0)
        collector = Collector(env, policy=None, frames_per_batch=8, total_frames=16)
        batches = list(collector)
        collector.shutdown()
    assert [b.batch_size for b in batches] == [torch.Size([8])] * 2
    assert sorted(env.group_map) == groups
    rewards = torch.cat([b["next", g, "reward"].flatten() for b in batches for g in groups])
    assert torch.isfinite(rewards).all() and (rewards != 0).any()  # the inner training ran under no_grad


def test_our_benchmarks_win_over_torchrls_namespace_from_any_directory(tmp_path):
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    torchrl = Path(importlib.util.find_spec("torchrl").origin).parent.parent
    assert (torchrl / "benchmarks").is_dir()  # torchrl 0.14 installs a namespace directory of that name
    run = subprocess.run([sys.executable, "-m", "benchmarks.language", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "--preset" in run.stdout, run.stderr
    ours = Path(__file__).resolve().parent.parent / "benchmarks" / "__init__.py"
    found = subprocess.run([sys.executable, "-c", "import benchmarks; print(benchmarks.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == str(ours), found.stdout + found.stderr  # the package itself, not a namespace
