"""Label noise (``envs.noise``, ``--label-noise``): seeded, only the training split, exactly the stated fraction,
counted when sent, and keyed in the teacher cache."""

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import teacher as bench
from benchmarks.harness import SWEEP_DATA
from benchmarks.protocol import paired_ratio
from benchmarks.store import Store, read_only
from benchmarks.teacher_report import chosen_on_validation
from envs.data import Split
from envs.noise import corrupt_labels
from tests.conftest import exit_code
from tests.test_teacher_cli import SMALL
from trainers.teacher_student.student import Selection, StudentConfig, StudentTrainer
from trainers.teacher_student.teachers import TeacherConfig, cache_path

LABELS = Split(torch.zeros(1000, 4), torch.arange(1000) % 10)


def test_corruption_is_the_stated_fraction_of_wrong_labels_and_seeded():
    noisy, mask = corrupt_labels(LABELS, 0.23, seed=5, classes=10)
    assert mask.sum() == 230 and (noisy.labels != LABELS.labels).sum() == 230  # every corrupted label is wrong
    assert torch.equal(noisy.labels[~mask], LABELS.labels[~mask]) and noisy.images is LABELS.images
    assert noisy.labels.min() >= 0 and noisy.labels.max() <= 9
    again, same = corrupt_labels(LABELS, 0.23, seed=5, classes=10)
    _, elsewhere = corrupt_labels(LABELS, 0.23, seed=6, classes=10)
    assert torch.equal(again.labels, noisy.labels) and torch.equal(same, mask)
    assert not torch.equal(elsewhere, mask)
    clean, none = corrupt_labels(LABELS, 0.0, seed=5, classes=10)
    assert clean is LABELS and not none.any()


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_corruption_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match="fraction in"):
        corrupt_labels(LABELS, fraction, 0, 10)


def test_benchmark_data_corrupts_the_training_split_only(splits):
    pool, holdout, mask = bench._data(splits, 20, 0.5, 3)
    assert torch.equal(pool.val.labels, splits.val.labels) and torch.equal(pool.test.labels, splits.test.labels)
    wrong = torch.cat([pool.train.labels, holdout.labels]) != splits.train.labels
    assert wrong.sum() == round(0.5 * len(splits.train.labels))  # the holdout is part of the training split
    assert torch.equal(wrong[: len(mask)], mask)
    clean = bench._data(splits, 20, None, None)
    assert torch.equal(clean[0].train.labels, splits.train.labels[:-20]) and not clean[2].any()


def test_trainer_counts_the_corrupted_samples_it_sends(splits):
    config = StudentConfig(hidden=(8,), batch_size=4, max_epochs=1, patience=1, eval_every=5)
    n = len(splits.train.labels)
    every = torch.ones(n, dtype=torch.bool)
    half = torch.arange(n) % 2 == 0
    results = {}
    for name, mask in (("all", every), ("none", None), ("half", half)):
        trainer = StudentTrainer(config, splits, [(Selection(), 0)], corrupted=mask)
        results[name] = trainer.fit()[0]
    steps = results["all"].steps
    assert results["all"].corrupted_sent == [4 * s for s in steps]
    assert results["none"].corrupted_sent == [0] * len(steps)
    final = results["half"].corrupted_sent[-1]
    assert 0 < final < 4 * steps[-1] and results["half"].val_accuracy == results["none"].val_accuracy  # only counted


def test_teacher_cache_is_keyed_by_the_labels(splits):
    noisy, _ = corrupt_labels(splits.train, 0.2, 0, 10)
    config, where = TeacherConfig(), Path("cache")
    assert cache_path(where, config, splits.train, 0) != cache_path(where, config, noisy, 0)
    copy = Split(splits.train.images.clone(), splits.train.labels.clone())
    assert cache_path(where, config, splits.train, 0) == cache_path(where, config, copy, 0)


def test_noisy_table_reports_the_corrupted_fraction_sent(data_root, tmp_path, capsys):
    out = tmp_path / "noisy.json"
    argv = ["--data-dir", str(data_root), "--out", str(out), "--logdir", str(tmp_path / "runs"), "--teacher-cache",
            str(tmp_path / "teachers"), *SMALL, "--stack-sizes", "2", "--measures", "cross_entropy", "--targets",
            "true", "--seeds", "1", "--label-noise", "0.4", "--holdout", "20"]
    assert exit_code(bench.main, argv) == 0
    printed = capsys.readouterr().out
    assert "corrupted sent % (of 40)" in printed
    data = json.loads(out.read_text())
    assert data["config"]["label_noise"] == 0.4
    run = data["cells"]["baseline"]["runs"]["0"]
    assert len(run["corrupted_sent"]) == len(run["steps"]) and run["corrupted_sent"][-1] > 0


@pytest.mark.parametrize("argv, message", [
    (["--label-noise", "1"], "--label-noise: label noise must be a fraction in [0, 1), got 1.0"),
    (["--label-noise-seed", "2"], "--label-noise-seed does nothing without --label-noise"),
])
def test_bad_label_noise_is_one_line(data_root, tmp_path, capsys, argv, message):
    out = tmp_path / "bad.json"
    code = exit_code(bench.main, ["--data-dir", str(data_root), "--out", str(out), *argv, "--quick"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_label_noise_sweeps_with_a_teacher_per_corruption(data_root, tmp_path, capsys):
    out, cache = tmp_path / "sweep.json", tmp_path / "teachers"
    argv = ["--data-dir", str(data_root), "--out", str(out), "--logdir", str(tmp_path / "runs"), "--teacher-cache",
            str(cache), *SMALL, "--stack-sizes", "2", "--measures", "cross_entropy", "--targets", "true", "--pressures",
            "inf,30", "--seeds", "1", "--holdout", "20", "--sweep", "label-noise=0,0.4"]
    assert exit_code(bench.main, argv) == 0
    cells = json.loads(out.read_text())["cells"]
    clean, noisy = (cells[f"label-noise={v}/baseline"]["runs"]["0"]["corrupted_sent"] for v in ("0", "0.4"))
    assert not any(clean) and noisy[-1] > 0
    assert len(list(cache.glob("teacher-*-seed0.pt"))) == 2  # one teacher per corruption
    printed = capsys.readouterr().out
    assert "speedup by per-run compute to each value's own target" in printed
    assert "% of the samples sent up to best validation whose label was corrupted" in printed
    assert "per seed: speedup to the target by backward passes / by per-run compute" in printed
    assert (tmp_path / "runs" / "sweep" / "speedup_vs_label-noise.png").stat().st_size > 1000
    # the figure: one line per rule, at each value the row chosen on validation
    drawn = json.loads((tmp_path / "runs" / "sweep" / f"speedup_vs_label-noise{SWEEP_DATA}").read_text())
    assert list(drawn["lines"]) == ["stack2-cross_entropy-true"]
    rows = [Selection(), *(Selection(2, "cross_entropy", "true", pressure) for pressure in (math.inf, 30.0))]
    with read_only():
        store = Store(out, "teacher", {})
    for value, point in zip(("0", "0.4"), drawn["lines"]["stack2-cross_entropy-true"], strict=True):
        [row] = chosen_on_validation(store, f"label-noise={value}/", rows).values()
        compute = [[cells[f"label-noise={value}/{name}"]["compute"]["0"]] for name in ("baseline", row)]
        speedup = paired_ratio(*compute)
        assert point[:1] == ([speedup.mean] if speedup else [])
