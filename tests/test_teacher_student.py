import dataclasses
import math

import pytest
import torch

import trainers.teacher_student.teachers as teacher_module
from benchmarks.protocol import crossing
from envs.selection import (
    MEASURES,
    TARGETS,
    Rule,
    Stack,
    cross_entropy,
    euclidean,
    label_loss,
    select_hardest,
    soft,
    target_loss,
)
from tests.conftest import killed_and_resumed
from trainers.files import CheckpointError
from trainers.teacher_student.student import (
    Selection,
    StudentConfig,
    StudentTrainer,
    counters_at,
    lr_factor,
)
from trainers.teacher_student.teachers import TeacherConfig, carve_holdout, load_or_train_teachers, predict

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
    assert cross_entropy(Stack(t, s), G).tolist() == pytest.approx([-math.log(0.25), -math.log(0.5)])
    assert euclidean(Stack(t, s), G).tolist() == pytest.approx([math.sqrt(0.0625 * 2 + 0.25),
                                                                 math.sqrt(0.25 + 0.0625 * 2)])
    a = MEASURES["random"](Stack(t, s), torch.Generator().manual_seed(3))
    b = MEASURES["random"](Stack(t, s), torch.Generator().manual_seed(3))
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
            (Selection(3, "euclidean", "true"), 0)]
    trainer = StudentTrainer(CONFIG, splits, runs, fake_teacher(splits, [0]))
    for _ in range(7):
        trainer.train_step()
    adam_steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {7}  # one parameter update per backward pass
    counters = [counters_at(sel, 7, trainer.epoch) for sel, _ in runs]
    assert counters[0] == {"backward_passes": 7, "student_forward_passes": 7, "teacher_forward_passes": 0}
    assert counters[1] == {"backward_passes": 7, "student_forward_passes": 42, "teacher_forward_passes": 35}
    assert counters[2] == {"backward_passes": 7, "student_forward_passes": 7, "teacher_forward_passes": 14}
    assert counters[3] == {"backward_passes": 7, "student_forward_passes": 28, "teacher_forward_passes": 21}


def test_stacks_walk_through_shuffled_epochs(splits):
    trainer = StudentTrainer(CONFIG, splits, [(Selection(5, "cross_entropy", "soft"), 0), (Selection(), 0)],
                             fake_teacher(splits, [0]))
    seen = torch.cat([trainer._stack_indices()[0, :20] for _ in range(5)])  # 5 stacks of 20 = one epoch of 100
    assert sorted(seen.tolist()) == list(range(100))


def test_the_teacher_picks_the_hardest_of_the_students_stack(splits, monkeypatch):
    trainer = StudentTrainer(CONFIG, splits, [(Selection(5, "cross_entropy", "true"), 0)], fake_teacher(splits, [0]))
    seen = {}
    stack_indices, choose = trainer._stack_indices, trainer._choose

    def record_stack():
        seen["idx"] = stack_indices()
        with torch.no_grad():  # the student's predictions before its update
            seen["student"] = torch.softmax(trainer.students(splits.train.images[seen["idx"]]), -1)
        return seen["idx"]

    def record_choice(stack):
        seen["chosen"] = choose(stack)
        return seen["chosen"]

    monkeypatch.setattr(trainer, "_stack_indices", record_stack)
    monkeypatch.setattr(trainer, "_choose", record_choice)
    trainer.train_step()
    idx = seen["idx"][0]
    scores = cross_entropy(Stack(torch.softmax(trainer.teacher_logits[0][idx], -1), seen["student"][0]), G)
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
    assert r.steps == list(range(10, r.stopped_step + 1, 10))  # one uniform grid: every eval_every passes
    assert crossing(r.steps, r.val_accuracy, -1.0) == r.steps[0] and crossing(r.steps, r.val_accuracy, 101.0) is None


def test_a_decayed_learning_rate_steps_as_adam_at_the_scaled_rate(splits):
    runs = [(Selection(), 0), (Selection(lr_schedule="cosine"), 0), (Selection(lr_schedule="linear"), 0)]
    trainer = StudentTrainer(CONFIG, splits, runs)
    alone = StudentTrainer(CONFIG, splits, runs[:1])
    assert lr_factor("cosine", 0.0) == lr_factor("linear", 0.0) == 1.0 and lr_factor("linear", 1.0) == 0
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5) and lr_factor("constant", 0.7) == 1.0
    for _ in range(30):
        trainer.train_step()
        alone.train_step()
    for got, want in zip(trainer.students.parameters(), alone.students.parameters(), strict=True):
        # the constant run steps as alone, to the rounding of batched kernels (a population of 3 and of 1 may
        # take different vector paths: bitwise equal on one 2-core VM, not on an AVX-512 one)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    # a reference Adam whose learning rate follows the cosine schedule, on the same minibatches
    reference = StudentTrainer(CONFIG, splits, runs[1:2])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        reference.optimizer, lambda step: lr_factor("cosine", step / reference.total_steps()))
    reference._step_optimizer = lambda: (reference.optimizer.step(), schedule.step())
    reference.decayed = []
    for _ in range(30):
        reference.train_step()
    for got, want in zip(trainer.students.parameters(), reference.students.parameters(), strict=True):
        torch.testing.assert_close(got[1], want[0], rtol=1e-5, atol=1e-6)
    assert Selection(lr_schedule="cosine").name == "baseline-cosine"
    assert Selection(5, "cross_entropy", "true", lr_schedule="linear").name == "stack5-cross_entropy-true-linear"


def test_the_holdout_is_carved_from_the_training_split_and_leaves_the_pool(splits):
    pool, holdout = carve_holdout(splits, 10)
    n = len(splits.train.images)
    assert len(pool.train.images) == n - 10 and torch.equal(holdout.images, splits.train.images[n - 10 :])
    assert pool.val is splits.val and pool.test is splits.test
    with pytest.raises(ValueError, match="must leave training images"):
        carve_holdout(splits, n)


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
               for k in whole.best_weights(r))


def test_students_resume_bit_for_bit_after_some_stopped_early(splits, tmp_path):
    runs = [(Selection(2, "cross_entropy", "soft"), 0), (Selection(5, "euclidean", "true"), 1), (Selection(), 2)]
    teachers = fake_teacher(splits, [0, 1, 2])
    config = dataclasses.replace(CONFIG, patience=1, max_epochs=6)
    whole = StudentTrainer(config, splits, runs, teachers).fit()
    stops = sorted(r.stopped_step for r in whole)
    assert stops[0] < stops[-1]  # the kill below falls after a run left the batch
    _, again = killed_and_resumed(lambda: StudentTrainer(config, splits, runs, teachers), stops[0] + 1,
                                  tmp_path / "ckpt.pt")
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


def test_rank_probabilities_sum_to_one_and_decay_exponentially_with_rank():
    scores = torch.tensor([0.3, 2.0, -1.0, 0.7, 5.0])  # ranks: 3, 1, 4, 2, 0
    p = Rule("cross_entropy", pressure=100.0).probabilities(scores)
    assert p.sum().item() == pytest.approx(1.0)
    ranks = torch.tensor([3, 1, 4, 2, 0])
    expected = 100.0 ** (-ranks / 5.0)
    assert torch.allclose(p, expected / expected.sum())
    assert p[4] / p[1] == pytest.approx(100.0 ** 0.2)  # one rank apart: a factor of pressure^(1/N)
    assert torch.allclose(Rule("cross_entropy", pressure=1.0).probabilities(scores), torch.full((5,), 0.2))


def test_rank_probabilities_ignore_padding_and_keep_the_floor():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, True, True, False, False]])
    p = Rule("cross_entropy", pressure=1e6, floor=0.2).probabilities(scores, valid=valid)
    assert p[0, 4:].tolist() == [0.0, 0.0] and p.sum().item() == pytest.approx(1.0)
    assert (p[0, :4] >= 0.2 / 4 - 1e-7).all()  # every real sample keeps floor / N
    assert p[0, 3].item() == pytest.approx(0.2 / 4 + 0.8 * 1e6 ** (-3 / 4) / sum(1e6 ** (-i / 4) for i in range(4)))


def test_annealing_goes_from_the_given_pressure_to_uniform():
    rule = Rule("cross_entropy", pressure=100.0, anneal=1000)
    assert rule.pressure_at(0) == 100.0 and rule.pressure_at(500) == pytest.approx(10.0)
    assert rule.pressure_at(1000) == 1.0 and rule.pressure_at(5000) == 1.0
    assert Rule("cross_entropy", pressure=100.0).pressure_at(10**6) == 100.0  # no schedule: constant


def test_sampled_selection_draws_distinct_valid_samples_with_the_rank_probabilities():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, 7.0]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    rule = Rule("cross_entropy", pressure=16.0)
    generator = torch.Generator().manual_seed(0)
    firsts = torch.zeros(6)
    for _ in range(4000):
        u = torch.rand(1, 6, generator=generator).clamp_min(1e-20)
        keys = torch.log(rule.probabilities(scores, valid=valid)) - torch.log(-torch.log(u))
        firsts[keys.argmax()] += 1
    assert firsts[5] == 0
    assert torch.allclose(firsts[:5] / 4000, rule.probabilities(scores, valid=valid)[0, :5], atol=0.03)
    stack = Stack(torch.full((5, 10), 0.1), torch.full((5, 10), 0.1))
    picked = rule(stack, 3, torch.Generator().manual_seed(1))
    assert len(set(picked.tolist())) == 3 and max(picked.tolist()) < 5


def test_reducible_loss_on_a_hand_example():
    teacher = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    student = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1])
    stack = Stack(teacher, student, labels, irreducible=torch.tensor([0.1, 0.2, 0.3]))
    assert label_loss(student, labels).tolist() == pytest.approx([-math.log(0.25), -math.log(0.5), -math.log(0.4)])
    assert MEASURES["reducible"](stack, G).tolist() == pytest.approx(
        [math.log(0.5 / 0.25), math.log(0.9 / 0.5), math.log(0.8 / 0.4)])
    assert MEASURES["reducible_holdout"](stack, G).tolist() == pytest.approx(
        [-math.log(0.25) - 0.1, -math.log(0.5) - 0.2, -math.log(0.4) - 0.3])


def test_sampled_selections_are_named_apart():
    selections = (Selection(), Selection(5, "cross_entropy", "soft"), Selection(10, "reducible", "true", 100.0),
                  Selection(20, "cross_entropy", "true", 1e6, 20_000, 0.05), Selection(2, "reducible_holdout", "soft"))
    assert len({sel.name for sel in selections}) == len(selections)
    name = Selection(5, "cross_entropy", "true", 100.0, 20_000, 0.1).name
    assert name == "stack5-cross_entropy-true-rank100-anneal20000-floor0.1"
    with pytest.raises(ValueError, match="finite --pressure"):
        Selection(5, "cross_entropy", "true", anneal=1000)
    with pytest.raises(ValueError, match="pressure must be >= 1"):
        Selection(5, "cross_entropy", "true", pressure=0.5)


def test_reducible_holdout_needs_the_irreducible_losses_and_uses_them(splits):
    runs = [(Selection(3, "reducible_holdout", "true"), 0)]
    with pytest.raises(ValueError, match="irreducible"):
        StudentTrainer(CONFIG, splits, runs, fake_teacher(splits, [0]))
    n = len(splits.train.images)
    trainer = StudentTrainer(CONFIG, splits, runs, irreducible={0: torch.arange(n, dtype=torch.float32) * 100})
    idx = trainer._stack_indices()
    trainer._stack_indices = lambda: idx
    seen = {}
    choose = trainer._choose
    trainer._choose = lambda stack: seen.setdefault("chosen", choose(stack))
    trainer.train_step()
    # the irreducible losses dwarf the student's: the samples with the lowest index are the most reducible
    assert set(idx[0, seen["chosen"][0]].tolist()) == set(idx[0].sort().values[:4].tolist())
