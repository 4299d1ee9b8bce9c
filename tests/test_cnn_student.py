"""Chapter 3 on CIFAR-10: CNN students and teachers (chapter 2's classifiers) batch, train and cache like the MLPs."""

import dataclasses

import pytest
import torch

from envs.data import Split, Splits
from trainers.teacher_student.student import Selection, StudentConfig, StudentTrainer
from trainers.teacher_student.teachers import (
    TeacherConfig,
    irreducible_config,
    irreducible_losses,
    irreducible_models,
    irreducible_training_cost,
    load_or_train_teachers,
    predict,
)

SHAPE = (3, 32, 32)
CONFIG = StudentConfig(model="dcgan-small", batch_size=4, max_epochs=1, patience=1, eval_every=5)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.rand(n, 3 * 32 * 32, generator=g), torch.arange(n) % 10)  # noqa: E731
    return Splits(split(40), split(20), split(20), shape=SHAPE)


def test_cnn_students_in_a_batch_step_as_they_would_alone(images):
    teacher = {k: torch.randn(40, 10, generator=torch.Generator().manual_seed(k)) for k in (0, 1)}
    runs = [(Selection(2, "cross_entropy", "true"), 0), (Selection(), 1)]
    together = StudentTrainer(CONFIG, images, runs, teacher)
    alone = StudentTrainer(CONFIG, images, runs[1:], teacher)
    for _ in range(3):
        together.train_step()
        alone.train_step()
    kept, mine = together.students.state_dict(), alone.students.state_dict()
    assert all(torch.allclose(kept[k][1], mine[k][0], atol=1e-6) for k in kept)
    assert kept["1.weight"].shape == (2, 8, 3, 4, 4)  # the first convolution of each run


def test_a_cnn_teacher_trains_caches_and_predicts(images, tmp_path):
    config = TeacherConfig(model="dcgan-small", batch_size=10, max_epochs=1, patience=1)
    assert config.dropout == 0.0 and TeacherConfig().dropout == 0.5
    first = load_or_train_teachers(images, [0], config, tmp_path)[0]
    again = load_or_train_teachers(images, [0], config, tmp_path)[0]  # from the cache
    assert torch.equal(predict(first, images.train.images), predict(again, images.train.images))
    assert predict(first, images.train.images).shape == (40, 10)


def test_a_cnn_refuses_dropout_and_flat_inputs(images):
    with pytest.raises(ValueError, match="has no dropout"):
        StudentTrainer(dataclasses.replace(CONFIG, dropout=0.5), images, [(Selection(), 0)])
    with pytest.raises(ValueError, match="takes images"):
        StudentTrainer(CONFIG, dataclasses.replace(images, shape=()), [(Selection(), 0)])


def test_the_irreducible_loss_model_can_be_the_students_cnn(images, tmp_path):
    from benchmarks import teacher as bench

    args = bench.build_parser().parse(["--irreducible-model", "dcgan-small", "--dataset", "cifar10"])
    cnn = dataclasses.replace(irreducible_config(args.irreducible_model, args.irreducible_hidden), max_epochs=1,
                              patience=1)
    assert (cnn.model, cnn.dropout) == ("dcgan-small", 0.0)
    holdout = images.val  # 20 images: the model trains on 10, stops on the other 10
    losses = irreducible_losses(images, irreducible_models(images, holdout, [0], tmp_path, cnn))[0]
    assert losses.shape == (40,) and torch.isfinite(losses).all() and (losses > 0).all()
    config, cost = irreducible_training_cost(tmp_path, holdout, 0, cnn)
    assert config.model == "dcgan-small" and cost == {"backward_passes": 1, "batch_size": 10}
    assert irreducible_training_cost(tmp_path, holdout, 0, dataclasses.replace(cnn, model="mlp"))[1] is None
