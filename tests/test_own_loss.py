"""Loshchilov & Hutter's online batch selection (``own_loss``): the student's latest known losses, the whole-set
ranking after a plain first epoch, refreshes and their cost, and AdaDelta beside Adam."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from agents.teacher_student import classifier
from envs.data import load_splits
from envs.selection import MEASURES, Rule, Stack
from tests.conftest import killed_and_resumed, make_dataset
from trainers.teacher_student.student import Selection, StudentConfig, StudentTrainer, counters_at

CONFIG = StudentConfig(hidden=(8,), batch_size=4, max_epochs=3, patience=3, eval_every=10)
WHOLE = Selection(0, "own_loss", "true", 100.0)


def test_own_loss_ranks_a_stack_by_the_latest_known_loss():
    probs = torch.full((4, 3), 1 / 3)
    stack = Stack(probs, probs, torch.zeros(4, dtype=torch.long), own_loss=torch.tensor([0.1, 5.0, math.inf, 2.0]))
    assert Rule("own_loss")(stack, 2, torch.Generator()).tolist() == [2, 1]  # never seen, then the largest loss
    with pytest.raises(ValueError, match="only a trainer keeps"):
        MEASURES["own_loss"](Stack(probs, probs), torch.Generator())


def test_own_reducible_subtracts_the_teachers_loss_so_a_sample_both_get_wrong_goes_last():
    teacher = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])  # right on 0, wrong on 1 (mislabelled), unsure on 2
    labels = torch.zeros(3, dtype=torch.long)
    stack = Stack(teacher, torch.full((3, 2), 0.5), labels, own_loss=torch.tensor([2.0, 3.0, 2.0]))
    scores = MEASURES["own_reducible"](stack, torch.Generator())
    assert torch.allclose(scores, torch.tensor([2 + math.log(0.9), 3 + math.log(0.1), 2 + math.log(0.5)]))
    assert Rule("own_loss")(stack, 1, torch.Generator()).tolist() == [1]  # the highest own loss: the mislabelled one
    assert Rule("own_reducible")(stack, 1, torch.Generator()).tolist() == [0]
    assert not MEASURES["own_reducible"].reads_student and MEASURES["own_reducible"].reads_teacher


def test_whole_set_ranks_by_own_reducible_with_the_teachers_loss(splits):
    n = len(splits.train.labels)
    logits = torch.zeros(n, 10)
    logits[torch.arange(n), splits.train.labels] = torch.arange(n, dtype=torch.float32) / n * 10  # surer as i grows
    trainer = StudentTrainer(CONFIG, splits, [(Selection(0, "own_reducible", "true"), 0)], teacher_logits={0: logits})
    assert trainer.runs[0][0].uses_teacher
    trainer.step = trainer.epoch
    trainer.own_losses[0] = torch.full((n,), 1.0)  # equal own losses: the teacher's loss alone orders the set
    assert trainer._stack_indices()[0].tolist() == [n - 1, n - 2, n - 3, n - 4]
    trainer.own_losses[0, 0] = math.inf  # never sent: first, whatever the teacher's loss
    assert trainer._stack_indices()[0].tolist()[0] == 0


def test_rank_probabilities_of_a_sorted_set_match_those_of_its_samples():
    rule = Rule("own_loss", 100.0, anneal=50, floor=0.2)
    scores = torch.randn(30, generator=torch.Generator().manual_seed(1))
    order = scores.argsort(descending=True)
    for step in (0, 25, 60):
        assert torch.allclose(rule.probabilities(scores, step)[order], rule.by_rank(30, step), atol=1e-7)
    p = Rule("own_loss", 100.0).by_rank(30)
    assert p[0] / p[-1] == pytest.approx(100 ** (29 / 30)) and p.sum() == pytest.approx(1)


def test_whole_set_runs_a_plain_first_epoch_then_sends_the_highest_latest_losses(splits):
    trainer = StudentTrainer(CONFIG, splits, [(dataclasses.replace(WHOLE, pressure=math.inf), 0)])
    assert torch.isinf(trainer.own_losses).all()
    trainer.train_step()
    seen = torch.isfinite(trainer.own_losses[0])
    assert seen.sum() == 4  # the first pass learnt the losses of the 4 samples it sent, and only those
    trainer.step = trainer.epoch  # after the plain first epoch the whole set is ranked
    trainer.own_losses[0] = torch.arange(len(splits.train.labels), dtype=torch.float32)
    n = len(splits.train.labels)
    assert trainer._stack_indices()[0].tolist() == [n - 1, n - 2, n - 3, n - 4]


def test_the_latest_loss_is_the_one_computed_in_the_training_pass(splits):
    trainer = StudentTrainer(CONFIG, splits, [(WHOLE, 0)])
    before = {k: v.clone() for k, v in trainer.students.state_dict().items()}
    idx = trainer._stack_indices()[0]
    trainer.stacks[0].order = torch.cat([idx, trainer.stacks[0].order])  # the step below sends the same batch
    trainer.train_step()
    trainer.students.load_state_dict(before)
    logits = trainer.students.shared(splits.train.images[idx])[0]
    expected = F.cross_entropy(logits, splits.train.labels[idx], reduction="none")
    assert torch.allclose(trainer.own_losses[0, idx], expected, atol=1e-6)


def test_refresh_recomputes_every_loss_and_is_counted(splits):
    trainer = StudentTrainer(CONFIG, splits, [(dataclasses.replace(WHOLE, refresh=3), 0)])
    for _ in range(3):
        trainer.train_step()
    logits = trainer.students.shared(splits.train.images)[0]
    expected = F.cross_entropy(logits, splits.train.labels, reduction="none")
    assert torch.allclose(trainer.own_losses[0], expected, atol=1e-5)
    epoch = trainer.epoch
    assert counters_at(dataclasses.replace(WHOLE, refresh=3), 7, epoch) == {
        "backward_passes": 7, "student_forward_passes": 7 + 2 * epoch, "teacher_forward_passes": 0}
    assert counters_at(Selection(5, "own_loss", "true"), 7, epoch)["student_forward_passes"] == 7  # no forward
    assert counters_at(Selection(5, "own_reducible", "true"), 7, epoch)["student_forward_passes"] == 7


def test_whole_set_selection_resumes_bit_for_bit(splits, tmp_path):
    runs = [(dataclasses.replace(WHOLE, refresh=7), 0), (Selection(), 1)]
    whole = StudentTrainer(CONFIG, splits, runs).fit()
    _, again = killed_and_resumed(lambda: StudentTrainer(CONFIG, splits, runs), 45, tmp_path / "ckpt.pt")
    assert [dataclasses.asdict(r) for r in again] == [dataclasses.asdict(r) for r in whole]


def test_adadelta_steps_each_run_as_it_would_alone(splits):
    config = dataclasses.replace(CONFIG, optimizer="adadelta", lr=None)
    assert config.lr == 1.0 and StudentConfig().lr == 1e-3
    together, alone = _together_and_alone(config, splits)
    assert isinstance(together.optimizer, torch.optim.Adadelta) and together.optimizer.defaults["rho"] == 0.95
    kept, mine = together.students.state_dict(), alone.students.state_dict()
    assert all(torch.allclose(kept[k][1], mine[k][0]) for k in kept)


def _together_and_alone(config: StudentConfig, splits) -> tuple[StudentTrainer, StudentTrainer]:
    """5 steps of a whole-set run beside a baseline run, and of the same baseline run alone."""
    runs = [(WHOLE, 0), (Selection(), 1)]
    trainers = StudentTrainer(config, splits, runs), StudentTrainer(config, splits, runs[1:])
    for trainer in trainers:
        for _ in range(5):
            trainer.train_step()
    return trainers


def test_lh_cnn_is_loshchilov_and_hutters_network():
    model = classifier((1, 28, 28), "lh-cnn")
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model if isinstance(m, torch.nn.BatchNorm2d)]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 32, (5, 5))]
    assert [(n.eps, n.momentum) for n in norms] == [(1e-4, 0.15)] * 2
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(512, 256), (256, 10)]
    assert [m.p for m in model if isinstance(m, torch.nn.Dropout)] == [0.5]
    assert sum(p.numel() for p in model.parameters()) == 160_490
    assert all((m.bias == 0).all() for m in convs + linears)  # Lasagne's zero biases
    assert model(torch.zeros(2, 784)).shape == (2, 10)
    # their order (batch norm, ReLU, pooling) computes the same outputs and gradients as ours (pooling, then ReLU)
    theirs = torch.nn.Sequential(*model[:3], model[4], model[3], *model[5:7], model[8], model[7], *model[9:]).eval()
    images = torch.randn(8, 784, requires_grad=True)
    ours, reference = model.eval()(images), theirs(images)
    assert torch.equal(ours, reference)
    assert torch.equal(*(torch.autograd.grad(y.square().sum(), images)[0] for y in (ours, reference)))


def test_lh_cnn_students_with_batch_norm_and_dropout_step_as_they_would_alone(tmp_path):
    splits = load_splits("mnist", make_dataset(tmp_path / "data", side=28), download=False)
    together, alone = _together_and_alone(dataclasses.replace(CONFIG, model="lh-cnn"), splits)
    assert together.students.generators is not None  # each student's dropout masks from its own generator
    kept, mine = together.students.state_dict(), alone.students.state_dict()
    # weights and running statistics, up to the summation order of a batched convolution
    assert all(torch.allclose(kept[k][1], mine[k][0], atol=1e-5) for k in kept)
    assert not torch.allclose(kept["2.running_var"][1], torch.ones(32))  # the training passes updated them
    model = classifier((1, 28, 28), "lh-cnn")
    model.load_state_dict(alone.students.member(0))
    images = splits.val.images[:50]
    assert torch.allclose(alone.students.eval().shared(images)[0], model.eval()(images), atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ({"stack_size": 0, "measure": "cross_entropy"}, "reads the student's own losses"),
    ({"stack_size": 0, "measure": "reducible"}, "reads the student's own losses"),
    ({"measure": "random", "refresh": 5}, "reads the student's own losses"),
    ({"stack_size": -1}, "must be >= 0"),
])
def test_whole_set_and_refresh_are_refused_where_they_mean_nothing(bad, message):
    with pytest.raises(ValueError, match=message):
        Selection(**bad)


def test_weight_decay_goes_with_adam_only():
    with pytest.raises(ValueError, match="goes with adam"):
        StudentConfig(optimizer="adadelta", weight_decay=0.01)
    assert StudentConfig(weight_decay=0.01).weight_decay == 0.01
