"""Every env module works with no arguments (PettingZoo's convention): data from $COMMCHANNELS_DATA, the
teacher/student env's oracle teacher (nothing trains); PettingZoo's own tests on the defaults."""

import math
import os
import time

import pytest

from envs import language, network, teacher_student

pytestmark = pytest.mark.skipif(not os.environ.get("COMMCHANNELS_DATA"), reason="real MNIST needs COMMCHANNELS_DATA")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing of ours may land in the user's cache


@pytest.mark.parametrize("module", [language, network, teacher_student], ids=lambda m: m.__name__)
def test_pettingzoo_tests_pass_on_the_defaults(module, tmp_path):
    from pettingzoo.test import api_test, max_cycles_test, parallel_api_test, parallel_seed_test, seed_test

    started = time.time()
    parallel_api_test(module.parallel_env(), num_cycles=5)
    api_test(module.env(), num_cycles=5)
    parallel_seed_test(module.parallel_env, num_cycles=5)
    seed_test(module.env, num_cycles=5)
    max_cycles_test(module)
    env = module.parallel_env()
    assert env.images.shape[1] == 784 and len(env.images) == 50_000  # MNIST's training split
    print(f"{module.__name__}: PettingZoo tests on the defaults in {time.time() - started:.0f} s")


def test_the_default_teacher_is_the_oracle_and_nothing_trains(tmp_path, monkeypatch):
    monkeypatch.setattr("trainers.teacher_student.StudentTrainer.fit", lambda *_: pytest.fail("trained"))
    env = teacher_student.parallel_env()
    assert (env.teacher_probs.argmax(-1) == env.labels).all()
    assert env.teacher_probs.max(-1).values.min().item() == pytest.approx(1 / (1 + 9 * math.exp(-10)))
    assert not (tmp_path / "cache" / "commchannels" / "teachers").exists()
