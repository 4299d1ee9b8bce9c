"""The trainer protocol every chapter implements: one fit loop, moving devices, the divergence guard."""

import dataclasses
import math
import types

import pytest
import torch

from tests.conftest import KillAt, killed_and_resumed
from trainers.base import Diverged, Events, Trainer, resolve_device
from trainers.language import LanguageConfig, LanguageTrainer
from trainers.network import NetworkConfig, NetworkTrainer
from trainers.teacher_student.student import Selection, StudentConfig, StudentTrainer

LANGUAGE = LanguageConfig(message_length=4, hidden=(16,), critic_hidden=16, batch_size=8, steps=6, eval_every=3)
NETWORK = NetworkConfig(nodes=3, content="logits", batch_size=8, steps=6, eval_every=3)
STUDENT = StudentConfig(hidden=(8,), batch_size=4, patience=2, max_epochs=2, eval_every=10)


def trainers(splits, device="cpu"):
    teacher = {0: torch.randn(len(splits.train.images), 10, generator=torch.Generator().manual_seed(0))}
    selections = [(Selection(2, "cross_entropy", "soft"), 0), (Selection(), 0)]
    return {
        "language": lambda: LanguageTrainer(LANGUAGE, splits, [("both", 0), ("none", 1)], device=device),
        "network": lambda: NetworkTrainer(NETWORK, splits, [0, 1], device=device),
        "student": lambda: StudentTrainer(STUDENT, splits, selections, teacher, device=device),
    }


class Recorder(Events):
    def __init__(self):
        self.finished_runs, self.tags, self.began = [], set(), None

    def begin(self, total, done):
        self.began = (total, done)

    def scalars(self, step, values):
        self.tags |= set(values)
        assert all(math.isfinite(v) for per_run in values.values() for v in per_run.values())

    def finished(self, run, result, weights):
        self.finished_runs.append(run)
        assert weights and all(isinstance(w, torch.Tensor) and w.device.type == "cpu" for w in weights.values())


@pytest.mark.parametrize("name", ["language", "network", "student"])
def test_every_trainer_implements_the_protocol(splits, name):
    make = trainers(splits)[name]
    trainer = make()
    assert isinstance(trainer, Trainer)
    assert set(trainer.evaluate(splits.val)) and all(len(v) == 2 for v in trainer.evaluate(splits.val).values())
    events = Recorder()
    results = trainer.fit(events)
    assert len(results) == 2 and sorted(events.finished_runs) == [0, 1] and events.began[1] == 0
    assert any(t.startswith("train/") for t in events.tags) and any(t.startswith("val/") for t in events.tags)
    fresh = make()
    fresh.load_state_dict(trainer.state_dict())
    assert fresh.step == trainer.step
    assert [dataclasses.asdict(fresh.result(r)) for r in (0, 1)] == [dataclasses.asdict(r) for r in results]


@pytest.mark.parametrize("name", ["language", "network", "student"])
def test_moving_a_trainer_mid_run_keeps_its_numbers(splits, name):
    make = trainers(splits)[name]
    whole = [dataclasses.asdict(r) for r in make().fit()]
    moved, events = make(), KillAt(4)
    events.trainer = moved
    with pytest.raises(KeyboardInterrupt):
        moved.fit(events)
    moved.to("cpu")  # a state round trip: rebuilt on the device, then every tensor and stream restored
    assert moved.step == 4
    assert [dataclasses.asdict(r) for r in moved.fit()] == whole


def test_training_time_counts_the_parts_before_a_kill(splits, tmp_path, monkeypatch):
    """A clock that reads the trainer's step: a kill at step 5 after the checkpoint at step 3, resumed to step 6,
    counts 6 steps of time, as an uninterrupted run does (not the 3 of the last part)."""
    made: list[Trainer] = []

    def make() -> Trainer:
        made.append(NetworkTrainer(NETWORK, splits, [0, 1]))
        return made[-1]

    monkeypatch.setattr("trainers.base.time", types.SimpleNamespace(monotonic=lambda: float(made[-1].step)))
    whole = make()
    whole.fit()
    resumed, _ = killed_and_resumed(make, 5, tmp_path / "c.pt")
    assert whole.elapsed_s == resumed.elapsed_s == NETWORK.steps
    assert torch.load(tmp_path / "c.pt")["elapsed_s"] == 3  # what the killed trainer had trained at its checkpoint


def test_a_non_finite_loss_stops_training_with_the_run_and_step(splits):
    config = dataclasses.replace(NETWORK, lr=1e30)
    with pytest.raises(Diverged, match=r"run \d diverged at step \d+: train/loss is (nan|inf)") as e:
        NetworkTrainer(config, splits, [0, 1]).fit()
    assert "\n" not in str(e.value)


def test_non_finite_weights_are_caught_at_the_evaluation(splits):
    trainer = trainers(splits)["student"]()
    with torch.no_grad():
        trainer.students.params["0.weight"][1, 0, 0] = float("nan")
    trainer.train_step = lambda: (setattr(trainer, "step", trainer.step + 1) or {"train/loss": torch.zeros(2)})
    with pytest.raises(Diverged, match=r"non-finite weights in 0\.weight"):
        trainer.fit()


def test_auto_device_and_unavailable_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the code path every --device cuda takes)")
@pytest.mark.parametrize("name", ["language", "network", "student"])
def test_every_trainer_trains_on_cuda_and_resumes_there(splits, name, tmp_path):
    make = trainers(splits, "cuda")[name]
    trainer = make()
    results = trainer.fit()
    assert all(math.isfinite(v) for r in results for v in dataclasses.asdict(r).values() if isinstance(v, float))
    assert all(p.device.type == "cuda" for p in trainer.parameters_by_name().values())
    again = [dataclasses.asdict(r) for r in make().fit()]
    assert again == [dataclasses.asdict(r) for r in results]  # same seed, same device, same numbers
    moved, events = make(), KillAt(4)
    events.trainer = moved
    with pytest.raises(KeyboardInterrupt):
        moved.fit(events)
    moved.to("cpu")
    assert all(p.device.type == "cpu" for p in moved.parameters_by_name().values())
    assert len(moved.fit()) == 2
