"""Command lines generated from the configs: defaults shown, --quick never beats an explicit flag,
sweeps, devices, and bad numbers refused before anything trains."""

import importlib

import pytest
import torch

from benchmarks import language, network, teacher
from benchmarks.cli import UsageError
from tests.conftest import exit_code

BENCHMARKS = ("language", "network", "teacher", "sb3", "throughput")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_help_shows_every_flags_default(name, capsys):
    parser = importlib.import_module(f"benchmarks.{name}").build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help" and not a.required]
    assert len(flags) >= 5
    for action in flags:
        assert "(default: " in (action.help or ""), f"{action.option_strings[0]} does not show its default"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert shown.count("(default:") >= len(flags)
    sections = [f"{cls.__name__} ({cls.__module__}):" for cls, _, _ in parser.configs]
    if name != "throughput":
        sections += ["data:", "seeds, device, sweeps and output:"]
    assert all(f"\n{s}\n" in shown for s in sections), sections


@pytest.mark.parametrize(("module", "argv", "given", "filled"), [
    (language, ["--quick", "--steps", "7", "--reference-epochs", "3"], {"steps": 7, "reference_epochs": 3},
     {"eval_every": 50, "seeds": [0]}),
    (network, ["--quick", "--eval-every", "5", "--seeds", "2"], {"eval_every": 5, "seeds": [0, 1]}, {"steps": 40}),
    (teacher, ["--quick", "--teacher-max-epochs", "3", "--patience", "4"], {"teacher_max_epochs": 3, "patience": 4},
     {"max_epochs": 2, "teacher_hidden": (256, 256)}),
])
def test_explicit_flags_beat_quick(module, argv, given, filled):
    args = module.build_parser().parse(argv, module.QUICK)
    assert {k: getattr(args, k) for k in given} == given
    assert {k: getattr(args, k) for k in filled} == filled


def test_config_flags_build_the_config_they_name():
    parser = language.build_parser()
    args = parser.parse(["--hidden", "64,32", "--temperature-floor", "0.5", "--speaker-layer-norm"])
    config = parser.build(language.LanguageConfig, args)
    assert config.hidden == (64, 32) and config.temperature.floor == 0.5 and config.speaker_layer_norm
    assert config.lr == language.LanguageConfig().lr


@pytest.mark.parametrize("argv", [["--lr", "nan"], ["--lr", "inf"], ["--ce-weight", "-inf"], ["--hidden", "0,4"]])
def test_non_finite_or_bad_numbers_are_refused_up_front(argv, capsys):
    assert exit_code(language.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and argv[0] in err


def test_sweep_values_parse_as_their_flag_parses():
    parser = language.build_parser()
    assert parser.sweep_flag("ce-weight=0.01,0.1") == ("ce-weight", "ce_weight", [("0.01", 0.01), ("0.1", 0.1)])
    assert parser.sweep_flag("hidden=64,64;32")[2] == [("64,64", (64, 64)), ("32", (32,))]
    assert parser.sweep_flag("straight-through=true,false")[2] == [("true", True), ("false", False)]
    for bad, message in (("colour=1,2", "FLAG one of"), ("seeds=1,2", "FLAG one of"), ("lr=1,x", "expected a number"),
                         ("estimator=gumbel,adam", "not one of"), ("lr=1,1", "repeat")):
        with pytest.raises(UsageError, match=message):
            parser.sweep_flag(bad)
    with pytest.raises(UsageError) as error:
        parser.sweep_flag("h=1,2")  # flags are named by their long option; help is never swept
    assert ", h," not in str(error.value) and "hidden" in str(error.value)


@pytest.mark.parametrize(("module", "flag"), [(language, "levels"), (language, "dataset"), (network, "nodes"),
                                            (network, "val-samples"), (teacher, "measures")])
def test_flags_that_pick_the_data_or_the_cells_are_not_swept(module, flag):
    with pytest.raises(UsageError, match=f"cannot vary --{flag}"):
        module.build_parser().sweep_flag(f"{flag}=1,2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the flag is valid here")
@pytest.mark.parametrize("name", BENCHMARKS)
def test_an_unavailable_device_is_one_line(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    argv = ["--device", "cuda", *(["--env", "language"] if name == "sb3" else [])]
    assert exit_code(module.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda is not available" in err


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_flag_refuses_its_abbreviation(name, capsys):
    """``--step 5`` must not silently become ``--steps 5``: each flag's longest prefix that names no other flag
    is refused as unknown, with the flag it looks like."""
    parser = importlib.import_module(f"benchmarks.{name}").build_parser()
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    required = ["--env", "language"] if name == "sb3" else []  # so the error is about the abbreviation
    tried = 0
    for flag in flags:
        short = flag[:-1]
        if len(short) < 4 or any(f == short for f in flags):
            continue
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args([*required, short, "1"])
        assert stopped.value.code == 2
        said = capsys.readouterr().err
        assert f"unrecognized arguments: {short}" in said and "did you mean --" in said, said
        tried += 1
    assert tried >= 5


@pytest.mark.parametrize(("argv", "said"), [
    (["--levels", ""], "--levels is empty"),
    (["--out", " "], "--out is empty"),
    (["--sweep", "lr=0.1,,0.2"], "--sweep lr has an empty item"),
    (["--levels", "none,,both"], "has an empty item in 'none,,both'"),
])
def test_empty_values_and_items_are_refused_not_dropped(argv, said, capsys):
    assert exit_code(language.main, argv) == 2
    assert said in capsys.readouterr().err


def test_a_negative_infinity_is_read_as_a_value_and_refused_by_name(capsys):
    assert exit_code(teacher.main, ["--pressures", "-inf"]) == 2
    assert "--pressures must be >= 1 (or inf), got '-inf'" in capsys.readouterr().err
