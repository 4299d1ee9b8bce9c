import dataclasses
import math

import pytest
import torch

import trainers.teacher as teacher_module
from envs.teacher_student import MEASURES, TARGETS, cross_entropy, euclidean, select_hardest, soft, target_loss
from tests.conftest import killed_and_resumed
from trainers.base import CheckpointError
from trainers.teacher import TeacherConfig, load_or_train_teachers, predict
from trainers.teacher_student import Selection, StudentConfig, StudentTrainer, per_step_counters

G = torch.Generator().manual_seed(0)


def test_selection_returns_exactly_the_hardest_samples():
    scores = torch.randn(3, 40, generator=G)
    chosen = select_hardest(scores, 7)
    for row, picked in zip(scores, chosen, strict=True):
        assert set(picked.tolist()) == set(row.argsort(descending=True)[:7].tolist())
        assert (row[picked].diff() <= 0).all()  # hardest first


def test_selection_never_picks_padding():
    scores = torch.tensor([[5.0, 1.0, 9.0, 7.0]])
    valid = torch.tensor([[True, True, False, False]])
    assert select_hardest(scores, 2, valid).tolist() == [[0, 1]]


def test_measures_on_a_hand_example():
    t = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    s = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])
    assert cross_entropy(t, s, G).tolist() == pytest.approx([-math.log(0.25), -math.log(0.5)])
    assert euclidean(t, s, G).tolist() == pytest.approx([math.sqrt(0.0625 * 2 + 0.25), math.sqrt(0.25 + 0.0625 * 2)])
    a = MEASURES["random"](t, s, torch.Generator().manual_seed(3))
    b = MEASURES["random"](t, s, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2,)


def test_soft_targets_are_the_teachers_distribution_at_temperature():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    for temperature in (1.0, 4.0):
        expected = torch.exp(logits / temperature) / torch.exp(logits / temperature).sum()
        assert torch.allclose(soft(logits, torch.tensor([0]), temperature), expected)
    assert soft(logits, torch.tensor([0]), 1000.0).max() < 0.34  # hot: close to uniform
    assert TARGETS["true"](logits, torch.tensor([2]), 1.0).tolist() == [[0.0, 0.0, 1.0]]
    assert target_loss(torch.log(expected), expected).item() == pytest.approx(
        -(expected * torch.log(expected)).sum().item(), rel=1e-5
    )


def test_selection_config_is_validated():
    with pytest.raises(ValueError, match="stack size"):
        Selection(0)
    with pytest.raises(ValueError, match="unknown measure"):
        Selection(2, "kl")
    assert Selection().name == "baseline" and Selection(5, "cross_entropy", "soft").name == "stack5-cross_entropy-soft"


CONFIG = StudentConfig(hidden=(8,), batch_size=4, patience=2, max_epochs=4, eval_every=10)


def fake_teacher(splits, seeds):
    return {s: torch.randn(len(splits.train.images), 10, generator=torch.Generator().manual_seed(s)) for s in seeds}


def test_counters_count_what_they_claim(splits):
    runs = [(Selection(), 0), (Selection(5, "cross_entropy", "soft"), 0), (Selection(2, "random", "soft"), 0),
            (Selection(3, "euclidean", "true"), 0)]  # fmt: skip
    trainer = StudentTrainer(CONFIG, splits, runs, fake_teacher(splits, [0]))
    for _ in range(7):
        trainer.train_step()
    adam_steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {7}  # one parameter update per backward pass
    counters = [{k: 7 * v for k, v in per_step_counters(sel).items()} for sel, _ in runs]
    assert counters[0] == {"backward_passes": 7, "student_forward_passes": 7, "teacher_forward_passes": 0}
    assert counters[1] == {"backward_passes": 7, "student_forward_passes": 42, "teacher_forward_passes": 35}
    assert counters[2] == {"backward_passes": 7, "student_forward_passes": 7, "teacher_forward_passes": 14}
    assert counters[3] == {"backward_passes": 7, "student_forward_passes": 28, "teacher_forward_passes": 21}


def test_stacks_walk_through_shuffled_epochs(splits):
    trainer = StudentTrainer(CONFIG, splits, [(Selection(5, "cross_entropy", "soft"), 0), (Selection(), 0)],
                             fake_teacher(splits, [0]))  # fmt: skip
    seen = torch.cat([trainer._stack_indices()[0, :20] for _ in range(5)])  # 5 stacks of 20 = one epoch of 100
    assert sorted(seen.tolist()) == list(range(100))


def test_the_teacher_picks_the_hardest_of_the_students_stack(splits, monkeypatch):
    import trainers.teacher_student as ts

    trainer = StudentTrainer(CONFIG, splits, [(Selection(5, "cross_entropy", "true"), 0)], fake_teacher(splits, [0]))
    seen = {}
    stack_indices, select = trainer._stack_indices, ts.select_hardest

    def record_stack():
        seen["idx"] = stack_indices()
        with torch.no_grad():  # the student's predictions before its update
            seen["student"] = torch.softmax(trainer.students(splits.train.images[seen["idx"]]), -1)
        return seen["idx"]

    def record_selection(scores, batch_size, valid=None):
        seen["chosen"] = select(scores, batch_size, valid)
        return seen["chosen"]

    monkeypatch.setattr(trainer, "_stack_indices", record_stack)
    monkeypatch.setattr(ts, "select_hardest", record_selection)
    trainer.train_step()
    idx = seen["idx"][0]
    scores = cross_entropy(torch.softmax(trainer.teacher_logits[0][idx], -1), seen["student"][0], G)
    assert len(idx) == 20 and set(seen["chosen"][0].tolist()) == set(scores.topk(4).indices.tolist())


def test_same_seed_same_numbers(splits):
    runs = [(Selection(), 1), (Selection(2, "cross_entropy", "soft"), 1)]

    def fit():
        return [dataclasses.asdict(r) for r in StudentTrainer(CONFIG, splits, runs, fake_teacher(splits, [1])).fit()]

    a, b = fit(), fit()
    assert a == b and a[0]["steps"] and 0 <= a[0]["test_accuracy"] <= 100


def test_early_stopping_and_steps_to_reach(splits):
    results = StudentTrainer(CONFIG, splits, [(Selection(), 0)], fake_teacher(splits, [0])).fit()
    r = results[0]
    assert r.stopped_step <= 4 * 25 and r.best_step <= r.stopped_step
    assert r.stopped_step - r.best_step >= 2 * 25 or r.stopped_step == 100
    assert r.steps_to_reach(-1.0) == r.steps[0] and r.steps_to_reach(101.0) is None


def test_teachers_are_cached_and_loaded_weights_only(splits, tmp_path, monkeypatch):
    config = TeacherConfig(hidden=(16,), batch_size=10, patience=1, max_epochs=2)
    first = load_or_train_teachers(splits, [0, 1], config, tmp_path)
    assert len(list(tmp_path.glob("teacher-*-seed*.pt"))) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("cached teachers must not be retrained")

    monkeypatch.setattr(teacher_module, "StudentTrainer", no_training)
    again = load_or_train_teachers(splits, [0, 1], config, tmp_path)
    for seed in (0, 1):
        assert torch.equal(predict(first[seed], splits.val.images), predict(again[seed], splits.val.images))
    assert not torch.equal(predict(first[0], splits.val.images), predict(first[1], splits.val.images))
    with pytest.raises(AssertionError, match="retrained"):
        load_or_train_teachers(splits, [0], config, tmp_path, retrain=True)
    next(tmp_path.glob("teacher-*-seed0.pt")).write_text("not a tensor file")
    with pytest.raises(CheckpointError, match=r"not a readable teacher cache file.*retrain-teacher"):
        load_or_train_teachers(splits, [0], config, tmp_path)


def test_training_ends_when_every_run_has_stopped(splits):
    config = dataclasses.replace(CONFIG, patience=1, max_epochs=50)
    trainer = StudentTrainer(config, splits, [(Selection(), 0), (Selection(), 1)])
    results = trainer.fit()
    assert trainer.step == max(r.stopped_step for r in results) < trainer.total_steps()
    assert all(r.steps[-1] == r.stopped_step for r in results)


def test_two_teacher_trainings_with_one_seed_give_identical_weights(splits, tmp_path):
    config = TeacherConfig(hidden=(16, 16), dropout=0.5, batch_size=10, patience=1, max_epochs=2)
    beside = load_or_train_teachers(splits, [0, 1], config, tmp_path / "a")[1].state_dict()
    alone = load_or_train_teachers(splits, [1], config, tmp_path / "b")[1].state_dict()
    torch.manual_seed(99)  # the global stream plays no part
    again = load_or_train_teachers(splits, [1], config, tmp_path / "c")[1].state_dict()
    assert all(torch.equal(alone[k], beside[k]) and torch.equal(alone[k], again[k]) for k in alone)


def test_teacher_training_resumes_bit_for_bit(splits, tmp_path):
    config = TeacherConfig(hidden=(16,), dropout=0.5, batch_size=10, patience=2, max_epochs=3).as_student(100)
    runs = [(Selection(), 0), (Selection(), 1)]
    whole = StudentTrainer(config, splits, runs)
    results = whole.fit()
    resumed, again = killed_and_resumed(lambda: StudentTrainer(config, splits, runs), 15, tmp_path / "ckpt.pt")
    assert [dataclasses.asdict(r) for r in again] == [dataclasses.asdict(r) for r in results]
    assert all(torch.equal(whole.best_weights(r)[k], resumed.best_weights(r)[k]) for r in (0, 1)
               for k in whole.best_weights(r))  # fmt: skip


def test_students_resume_bit_for_bit_after_some_stopped_early(splits, tmp_path):
    runs = [(Selection(2, "cross_entropy", "soft"), 0), (Selection(5, "euclidean", "true"), 1), (Selection(), 2)]
    teachers = fake_teacher(splits, [0, 1, 2])
    config = dataclasses.replace(CONFIG, patience=1, max_epochs=6)
    whole = StudentTrainer(config, splits, runs, teachers).fit()
    stops = sorted(r.stopped_step for r in whole)
    assert stops[0] < stops[-1]  # the kill below falls after a run left the batch
    _, again = killed_and_resumed(lambda: StudentTrainer(config, splits, runs, teachers), stops[0] + 1,
                                  tmp_path / "ckpt.pt")  # fmt: skip
    assert [dataclasses.asdict(r) for r in again] == [dataclasses.asdict(r) for r in whole]


def test_dropping_finished_runs_leaves_the_others_unchanged(splits):
    runs = [(Selection(2, "cross_entropy", "soft"), 0), (Selection(5, "euclidean", "true"), 1), (Selection(), 2)]
    teachers = fake_teacher(splits, [0, 1, 2])
    together = StudentTrainer(CONFIG, splits, runs, teachers)
    for _ in range(5):
        together.train_step()
    together.drop([1])  # the stack-5 run finished: the batch shrinks to stacks of 2
    for _ in range(5):
        together.train_step()
    alone = {}
    for r in (0, 2):
        trainer = StudentTrainer(CONFIG, splits, [runs[r]], teachers)
        for _ in range(10):
            trainer.train_step()
        alone[r] = trainer.students.state_dict()
    kept = together.students.state_dict()
    for position, r in enumerate((0, 2)):
        for k in kept:
            assert torch.allclose(kept[k][position], alone[r][k][0], atol=1e-6), (r, k)  # batch-size rounding
    assert together.stack == 8 and len(together.batch) == 2
