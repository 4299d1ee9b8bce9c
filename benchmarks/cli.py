"""Command lines generated from config dataclasses (CleanRL's way), the same for every benchmark.

Every field of a trainer's config becomes a flag (``ce_weight`` -> ``--ce-weight``; a nested dataclass
prefixes its fields: ``--temperature-start``) with its help and default shown. Defaults are filled
after parsing, so ``--quick`` (or a default derived from another flag) only fills what the user did
not give. ``--sweep FLAG=v1,v2`` runs one variant per value of any flag, parsed as that flag parses.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

NOT_SWEPT = {"seeds", "out", "logdir", "quick", "preset", "sweep", "device", "data-dir", "help"}


class UsageError(ValueError):
    """Bad input from the command line; shown as one line, exit code 2."""


def finite_float(text: str) -> float:
    """A float that is neither nan nor infinite (a NaN learning rate would train garbage for minutes)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def split_items(text: str, what: str) -> list[str]:
    """The comma-separated items of ``text``, stripped; an empty one (``1,,2``, a trailing comma, ``""``) is
    refused, never dropped, so a typo cannot change the grid silently."""
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise UsageError(f"{what} has an empty item in {text!r}; separate the values with single commas")
    return items


def int_tuple(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. hidden widths ``256,256``."""
    try:
        values = tuple(int(x) for x in split_items(text, "the list"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def seed_list(text: str) -> list[int]:
    """``--seeds``: a count ``5`` (seeds 0-4), a range ``100-104`` or a list ``100,101`` (ranges allowed in
    it): tuning and reporting seeds are named apart."""
    items = [x.strip() for x in text.split(",")]
    seeds: list[int] = []
    try:
        if len(items) == 1 and "-" not in items[0]:
            if int(items[0]) < 1:
                raise argparse.ArgumentTypeError(f"a count of seeds must be >= 1, got {text!r} (seed 0 "
                                                 f"alone is the range 0-0)")
            return list(range(int(items[0])))
        for item in items:
            first, dash, last = item.partition("-")
            low, high = int(first), int(last if dash else first)
            if high < low:
                raise ValueError
            seeds += range(low, high + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (5), a range (100-104) or seeds (100,101) of whole "
                                         f"numbers >= 0, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat in {text!r}")
    return seeds


def boolean(text: str) -> bool:
    """``true``/``false`` (for sweeps over a switch)."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


_PARSERS: dict[Any, Callable[[str], Any]] = {int: int, float: finite_float, str: str, tuple: int_tuple}


def _parse_type(tp: Any) -> Any:
    """The non-None member of ``X | None`` and the origin of ``tuple[int, ...]``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return typing.get_origin(tp) or tp


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose flags show their defaults, fill them after parsing and report bad input in one
    line (no usage dump) with exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # --quick never silently means --quick-teacher
        self._optionals.title = "this benchmark"  # then a section per config, data, and seeds and output
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+|inf|nan)$", re.I)  # -inf is a value
        self.defaults: dict[str, Any] = {}
        self.empty_ok: set[str] = set()  # dests whose empty value means something (documented in their help)
        self.readers: dict[str, dict[str, tuple | None]] = {}  # dest -> the settings under which it is read
        self._target: Any = self  # where ``option`` adds its flag: the parser, or the group being filled
        self.configs: list[tuple[type, str, tuple[str, ...]]] = []
        self.fixed: set[str] = set()  # flags a benchmark reads once (its data, its cells): never swept
        self.presets: dict[str, dict[str, Any]] = {}  # --preset NAME: values for flags the user did not set

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):  # abbreviations are off: name the flag meant
            flags = [o for a in self._actions for o in a.option_strings]
            unknown = [w.split("=")[0] for w in message.split(": ", 1)[1].split() if w.startswith("--")]
            close = {w: difflib.get_close_matches(w, flags, 1, cutoff=0.7) for w in unknown}
            hints = [f"{w} is not a flag (did you mean {m[0]}?)" for w, m in close.items() if m]
            message += (": " + "; ".join(hints)) if hints else "; see --help"
        self.exit(2, f"{self.prog}: error: {message}\n")

    def option(self, flag: str, default: Any, help: str, default_text: str | None = None,
               read_with: dict[str, tuple | None] | None = None, **kwargs: Any) -> None:
        """A flag whose default is filled after parsing (``None``: derived, say how in ``default_text``).
        ``read_with`` ``{setting: values}``: the flag is read only when ``--setting`` is one of ``values`` (``None``:
        when ``--setting`` is given); given otherwise, it is refused rather than ignored."""
        dest = flag.lstrip("-").replace("-", "_")
        self.defaults[dest] = default
        if read_with:
            self.readers[dest] = read_with
        shown = default_text or ("off" if default is False else default)
        if kwargs.get("type") is int_tuple and isinstance(default, tuple):
            shown = ",".join(map(str, default))
        self._target.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=f"{help} (default: {shown})",
                                  **kwargs)

    @contextlib.contextmanager
    def group(self, title: str) -> Iterator[None]:
        """The flags added inside form one section of ``--help``."""
        previous, self._target = self._target, self.add_argument_group(title)
        try:
            yield
        finally:
            self._target = previous

    def config(self, cls: type, prefix: str = "", exclude: tuple[str, ...] = (),
               read_with: dict[str, tuple | None] | None = None) -> None:
        """One flag per field of the dataclass ``cls`` (nested dataclasses: prefixed flags), in a section of
        ``--help`` of its own. A field's ``read_with`` metadata names settings of the same config (``option``);
        ``read_with`` here applies to every field (a config that only one setting reads)."""
        self.configs.append((cls, prefix, exclude))
        with self.group(f"{cls.__name__} ({cls.__module__})"):
            self._fields(cls, prefix, exclude, read_with or {})

    def _fields(self, cls: type, prefix: str, exclude: tuple[str, ...], read_with: dict[str, tuple | None]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tp = _parse_type(hints[f.name])
            name = f"{prefix}{f.name.replace('_', '-')}"
            if dataclasses.is_dataclass(tp):
                self._fields(tp, f"{name}-", (), read_with)
                continue
            help, extra = f.metadata.get("help", ""), {}
            if tp is bool:
                extra["action"] = argparse.BooleanOptionalAction
            else:
                extra["type"] = _PARSERS[tp]
            if "choices" in f.metadata:
                extra["choices"] = list(f.metadata["choices"])
            own = {f"{prefix}{k}".replace("-", "_"): v for k, v in f.metadata.get("read_with", {}).items()}
            self.option(f"--{name}", default, help, f.metadata.get("default_text"), {**own, **read_with}, **extra)

    def parse(self, argv: list[str] | None, quick: dict[str, Any] | None = None) -> argparse.Namespace:
        """Parse; ``args.given`` holds the dests the user set; unset ones get ``quick`` (with ``--quick``),
        then the chosen ``--preset``'s values, then their defaults."""
        args = self.parse_args(argv)
        args.given = set(vars(args))
        for dest, value in vars(args).items():
            if isinstance(value, str) and not value.strip() and dest not in self.empty_ok:
                raise UsageError(f"--{dest.replace('_', '-')} is empty; give a value or leave the flag out for its "
                                 f"default")
        fill = quick if getattr(args, "quick", False) else {}
        preset = self.presets.get(getattr(args, "preset", None), {})
        for dest, default in {**self.defaults, **preset, **(fill or {})}.items():
            if dest not in args.given:
                setattr(args, dest, default)
        self._refuse_unread(args)
        return args

    def _refuse_unread(self, args: argparse.Namespace) -> None:
        """A flag given (or swept) where no variant's setting reads it is refused: it would be ignored silently."""
        swept = self.sweep_flag(getattr(args, "sweep", None))
        values_of = {swept[1]: [v for _, v in swept[2]]} if swept else {}
        for dest, read_with in self.readers.items():
            if dest not in args.given and not (swept and swept[1] == dest):
                continue
            for setting, values in read_with.items():
                chosen = values_of.get(setting, [getattr(args, setting)])
                if any(v is not None if values is None else v in values for v in chosen):
                    continue
                flag, where = f"--{dest.replace('_', '-')}", f"--{setting.replace('_', '-')}"
                if values is None:
                    raise UsageError(f"{flag} does nothing without {where}; give {where} or drop {flag}")
                raise UsageError(f"{flag} does nothing with {where} {'/'.join(map(str, chosen))}; it is read with "
                                 f"{where} {'|'.join(map(str, values))}")

    def build(self, cls: type, args: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
        """The config ``cls`` from the parsed flags (``prefix`` as given to ``config``); a value the config
        rejects is a one-line ``UsageError``."""
        kwargs = {}
        hints = typing.get_type_hints(cls)
        excluded = {n for c, p, names in self.configs if c is cls and p.replace("-", "_") == prefix for n in names}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                kwargs[f.name] = overrides[f.name]
                continue
            if f.name in excluded:  # no flag of its own: a flag of the same name belongs to the benchmark
                continue
            dest = f"{prefix}{f.name}".replace("-", "_")
            if dataclasses.is_dataclass(_parse_type(hints[f.name])):
                kwargs[f.name] = self.build(_parse_type(hints[f.name]), args, f"{dest}_")
            elif hasattr(args, dest):
                kwargs[f.name] = getattr(args, dest)
        try:
            return cls(**kwargs)
        except ValueError as e:  # a message that starts with a field's name names its flag instead
            name, _, rest = str(e).partition(" ")
            named = name in {f.name for f in dataclasses.fields(cls)} and hasattr(args, f"{prefix}{name}")
            flag = "--" + f"{prefix}{name}".replace("_", "-")
            raise UsageError(f"{flag} {rest}" if named else str(e)) from None

    def sweep_flag(self, spec: str | None) -> tuple[str, str, list[tuple[str, Any]]] | None:
        """``--sweep FLAG=v1,v2`` -> (flag, dest, [(text, value)]); values split on ``;`` when any contains
        a comma (``--sweep "hidden=64,64;256,256"``)."""
        if not spec:
            return None
        name, _, text = spec.partition("=")
        name = name.strip().lstrip("-")
        actions = {next(o for o in a.option_strings if o.startswith("--"))[2:]: a for a in self._actions
                   if a.option_strings}
        if name in self.fixed:
            raise UsageError(f"--sweep cannot vary --{name}: it picks this benchmark's data or its cells (give "
                             f"several in one run, or one --out per value)")
        if name not in actions or name in NOT_SWEPT or not text:
            skip = NOT_SWEPT | self.fixed
            allowed = ", ".join(sorted(n for n in actions if n not in skip and not n.startswith("no-")))
            raise UsageError(f"--sweep takes FLAG=v1,v2,... with FLAG one of: {allowed}; got {spec!r}")
        action = actions[name]
        parse = boolean if isinstance(action, argparse.BooleanOptionalAction) else (action.type or str)
        values = []
        items = [v.strip() for v in text.split(";" if ";" in text else ",")]
        if not all(items):
            raise UsageError(f"--sweep {name} has an empty item in {text!r}; separate the values with single commas "
                             f"(or semicolons)")
        for item in items:
            try:
                value = parse(item)
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise UsageError(f"--sweep {name}: {e}") from None
            if action.choices and value not in action.choices:
                raise UsageError(f"--sweep {name}: {item!r} is not one of {', '.join(map(str, action.choices))}")
            values.append((item, value))
        if len({v for _, v in values}) != len(values):
            raise UsageError(f"--sweep {name}: values repeat in {text!r}")
        return name, action.dest, values


def variants(parser: ArgumentParser, args: argparse.Namespace) -> Iterator[tuple[str, argparse.Namespace]]:
    """``("", args)`` without ``--sweep``; else ``("flag=value", args with that value)`` per value."""
    swept = parser.sweep_flag(args.sweep)
    if swept is None:
        yield "", args
        return
    name, dest, values = swept
    for text, value in values:
        variant = copy.copy(args)
        setattr(variant, dest, value)
        variant.given = args.given | {dest}
        yield f"{name}={text}", variant


def add_preset(parser: ArgumentParser, presets: dict[str, dict[str, Any]], why: str) -> None:
    """``--preset NAME``: a named setting of several flags (each listed in ``--help``); explicit flags win."""
    parser.presets = presets
    listed = "; ".join(
        f"{name} = " + " ".join(f"--{dest.replace('_', '-')} {_shown(value)}" for dest, value in values.items())
        for name, values in presets.items()
    )
    parser.option("--preset", None, f"{why}: {listed}; explicit flags win", default_text="none",
                  choices=list(presets))


def _shown(value: Any) -> str:
    """A value as its flag is written (a tuple of widths: ``512,512``)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_sweep(parser: ArgumentParser) -> None:
    parser.option("--sweep", None, "one variant per value of any flag, e.g. ce-weight=0.01,0.1 (values with commas: "
                  "separate them with ';')", default_text="no sweep")


def add_data(parser: ArgumentParser, default: str | None, help: str = "dataset", default_text: str | None = None,
             choices: list[str] | None = None) -> None:
    """``--dataset`` and ``--data-dir``, spelled once (inside ``parser.group("data")``)."""
    parser.option("--dataset", default, help, default_text, choices=choices)
    parser.option("--data-dir", None, "dataset root", default_text="$COMMCHANNELS_DATA, else a per-user cache")


def add_common(parser: ArgumentParser, out: str, quick: str) -> None:
    """The flags every benchmark has, spelled and explained once: a section of ``--help``."""
    with parser.group("seeds, device, sweeps and output"):
        _add_common(parser, out, quick)


def _add_common(parser: ArgumentParser, out: str, quick: str) -> None:
    parser.option("--seeds", None, "seeds: a count n (seeds 0..n-1), a range 100-104 or a list 100,101",
                  default_text=quick.split("|")[0], type=seed_list)
    parser.option("--device", "auto", "where to train: auto is cuda when available, else cpu",
                  choices=["auto", "cpu", "cuda", "mps"])
    add_sweep(parser)
    parser.option("--logdir", "runs", "TensorBoard root: runs go to <logdir>/<out name>/[<flag>=<value>/]<cell>/seed<k>"
                  )
    parser.option("--out", None, "results JSON", default_text=out)
    parser.option("--quick", False, f"a one-minute smoke run: {quick.split('|')[1]}", action="store_true")
