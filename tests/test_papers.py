"""The two papers' presets (``--preset loshchilov-hutter``, ``--preset rho-loss``) and RHO-LOSS's baselines."""

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import teacher as bench
from benchmarks.cli import variants
from benchmarks.report import command
from envs.selection import MEASURES, Rule, Stack


def _built(argv):
    parser = bench.build_parser()
    args = parser.parse(argv)
    return [bench._variant(parser, label, v) for label, v in variants(parser, args)]


def test_loshchilov_hutter_ranks_the_whole_set_with_both_optimizers():
    built = _built(["--preset", "loshchilov-hutter"])
    assert [label for label, *_ in built] == ["optimizer=adam", "optimizer=adadelta"]
    assert built[0][1].holdout == 0  # their 50,000 training images
    assert [(s.optimizer, s.lr, s.batch_size, s.model, s.max_epochs) for *_, s, _, _ in built] == [
        ("adam", 1e-3, 64, "lh-cnn", 50), ("adadelta", 1.0, 64, "lh-cnn", 50)]
    rows = built[0][2]
    assert rows[0].name == "baseline" and {r.stack_size for r in rows[1:]} == {0}
    # their scenarios 3-10: pressure 1e2 or 1e8, constant or falling over the 50 epochs, recomputed never or every
    # 100,000 samples
    assert {(r.measure, r.pressure, r.anneal, r.refresh) for r in rows[1:]} == {
        ("own_loss", p, a, r) for p in (100.0, 1e8) for a in (0, 39_062) for r in (0, 1563)}


def test_rho_loss_takes_the_top_tenth_of_320_candidates_with_adamw():
    (label, args, rows, student, _, _), = _built(["--preset", "rho-loss"])
    assert label == "" and args.holdout == 25_000 and args.irreducible_hidden == (512, 512, 512)
    assert (student.hidden, student.weight_decay, student.lr, student.batch_size) == ((512, 512, 512), 0.01, 1e-3, 32)
    assert [r.name for r in rows] == ["baseline", "stack10-reducible_holdout-true", "stack10-loss-true",
                                      "stack10-irreducible-true"]
    assert all(math.isinf(r.pressure) for r in rows)  # the top 10%, not a draw


def test_explicit_flags_win_over_a_preset():
    (_, _, rows, student, _, _), = _built(["--preset", "rho-loss", "--hidden", "32,32", "--measures", "loss"])
    assert student.hidden == (32, 32) and [r.name for r in rows] == ["baseline", "stack10-loss-true"]


def test_rho_loss_baselines_on_a_hand_stack():
    student = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    stack = Stack(student, student, torch.tensor([0, 0, 1]), irreducible=torch.tensor([0.3, 2.0, 0.1]))
    g = torch.Generator()
    assert MEASURES["loss"](stack, g).tolist() == pytest.approx([-math.log(0.9), -math.log(0.2), -math.log(0.5)])
    assert Rule("loss")(stack, 1, g).tolist() == [1]  # the mislabelled-looking sample: highest train loss
    assert Rule("irreducible")(stack, 1, g).tolist() == [2]  # the lowest irreducible loss
    assert not MEASURES["irreducible"].reads_student and MEASURES["loss"].reads_student


@pytest.mark.parametrize("name", ["teacher", "teacher-cosine30", "teacher-policies-chosen"])
def test_files_written_before_the_new_settings_still_resume(name):
    """The committed summaries' configurations equal what their recorded commands give today."""
    path = Path("docs/results") / f"{name}.json.gz"
    data = json.loads(gzip.decompress(path.read_bytes()))
    parser = bench.build_parser()
    args = parser.parse(command(path, data, None)[1])
    _, _, _, student, teacher, policy = bench._variant(parser, "", args)
    holdout = args.holdout if args.holdout is not None else 5_000
    identity = json.loads(json.dumps(bench._identity(args, student, teacher, policy, holdout)))
    written = data["config"]
    assert {k: v for k, v in identity.items() if v is not None} == written
