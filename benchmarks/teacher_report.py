"""Table 3.1's report: per cell and seed the validation crossings of the targets and the compute to them, the
rule chosen on validation, one-off costs, the table, Figure 3.1 and the speedup-vs-pressure figures, all read
from the results store (``benchmarks.teacher`` calls it after training; ``benchmarks.report`` from a file)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from benchmarks.harness import format_counts, format_table, plot_panels, plot_sweep
from benchmarks.protocol import SUSTAIN, choose, crossing, held_target, paired_ratio, reached
from benchmarks.store import Store, format_summary, seed_text
from envs.selection import MEASURES
from trainers.teacher_student.student import Selection, StudentConfig, counters_at, forward_inclusive
from trainers.teacher_student.teachers import IRREDUCIBLE, TeacherConfig, forward_cost, irreducible_config

# Table 3.1: (stack size, measure, target) -> (test accuracy %, backward passes to the baseline's accuracy)
THESIS = {
    Selection(): (96.4, 39_000),
    Selection(2, "cross_entropy", "soft"): (96.9, 25_000),
    Selection(2, "cross_entropy", "true"): (96.5, 18_700),
    Selection(2, "euclidean", "soft"): (96.8, 18_700),
    Selection(2, "random", "soft"): (96.7, 32_800),
    Selection(5, "cross_entropy", "soft"): (96.8, 13_700),
    Selection(5, "cross_entropy", "true"): (96.8, 9_100),
}
THESIS_TARGET = 96.4  # the thesis' baseline accuracy (Table 3.1): a second target beside the baseline's own
FIGURE_ZOOM = (94.0, 98.0)  # Figure 3.1's validation accuracy range: where the rules part
TARGETS_OF = {"": "the target", "_thesis_target": f"{THESIS_TARGET}%"}  # key suffix -> what it is


def _cost_units(student: StudentConfig, model: TeacherConfig, shape: tuple[int, ...]) -> float:
    """One forward pass of ``model`` in forward passes of the student (multiply-adds per image)."""
    return forward_cost(model, shape) / forward_cost(student, shape)


def report_seeds(seeds: list[int], tuning: list[int]) -> list[int]:
    """The seeds a table reports: all but the tuning seeds (all of them when none tune)."""
    return [k for k in seeds if k not in tuning] or seeds


def summarise(store: Store, at: str, configs: list[Selection], seeds: list[int], tuning: list[int],
              target: float | None, epoch: int) -> None:
    """Per cell and seed, the validation crossings of the target and of the thesis' 96.4% (``benchmarks.protocol``)
    and the compute to each. The target (``--target-accuracy``, else the highest validation accuracy the baseline
    holds on every reported seed) goes under the baseline's cell, with the tuning seeds' own."""
    data = store.data
    store.summarise([at + c.name for c in configs], seeds, ["test_accuracy", "best_val_accuracy", "best_step"])
    runs = {c.name: store.runs(at + c.name) for c in configs}
    curves = lambda ks: [runs["baseline"][k]["val_accuracy"] for k in ks]  # noqa: E731
    reported = report_seeds(seeds, tuning)
    targets = {"": target if target is not None else held_target(curves(reported)), "_thesis_target": THESIS_TARGET}
    tuning_target = target if target is not None else held_target(curves(tuning)) if tuning else targets[""]
    data["cells"][at + "baseline"].update(target_accuracy=targets[""], tuning_target_accuracy=tuning_target,
                                          target_given=target is not None)
    for c in configs:
        entry = data["cells"][at + c.name]
        levels = [*((key, level, seeds) for key, level in targets.items()), ("_tuning", tuning_target, tuning or seeds)]
        for key, level, ks in levels:
            mine = runs[c.name]
            passes = {str(k): crossing(mine[k]["steps"], mine[k]["val_accuracy"], level) for k in ks}
            entry[f"backward_passes{key}"] = passes
            if key != "_tuning":  # the choice reads passes only
                entry[f"compute{key}"] = {k: None if n is None else forward_inclusive(counters_at(c, n, epoch))
                                          for k, n in passes.items()}
        entry["thesis"] = dict(zip(("accuracy", "backward_passes"), THESIS.get(c, (None, None)), strict=True))
    store.save()


def chosen_on_validation(store: Store, at: str, configs: list[Selection]) -> dict[tuple, str]:
    """Per rule family (stack size, measure, target, schedule) with several candidates (pressure, annealing,
    floor; a learned teacher's reward and seed), the one chosen on the tuning seeds' validation crossings
    (``benchmarks.protocol.choose``): ``{family: cell name}``."""
    cells, members = store.data["cells"], {}
    for c in configs:
        if c.name != "baseline":
            members.setdefault(_family(c), []).append(c.name)
    control = cells[at + "baseline"]["backward_passes_tuning"]
    seeds = list(control)
    per_seed = lambda name: [cells[at + name]["backward_passes_tuning"][k] for k in seeds]  # noqa: E731
    return {family: choose({n: per_seed(n) for n in names}, per_seed("baseline"))
            for family, names in members.items() if len(names) > 1}


def one_off_costs(references: dict, at: str, c: Selection, seeds: list[int], student: StudentConfig,
                  teacher: TeacherConfig, shape: tuple[int, ...], n_train: int,
                  irreducible: TeacherConfig = IRREDUCIBLE) -> float:
    """What a row pays once, before any student trains, in student minibatch forwards (mean over ``seeds``):
    training the teacher (forward + 2 x backward of every image it trained on) and its logits on every
    training image, where the row uses the teacher; the same for the irreducible-loss model and its losses,
    where the row reads them. ``references`` holds the images each model trained on, per seed."""
    parts = [(teacher, "teacher")] if c.uses_teacher else []
    parts += [(irreducible, "irreducible")] if MEASURES[c.measure].reads_irreducible else []
    total = 0.0
    for model, kind in parts:
        unit = _cost_units(student, model, shape) / student.batch_size  # one image's forward
        trained = [references.get(f"{at}{kind}_training_images", {}).get(str(k)) for k in seeds]
        trained = [3 * images * unit for images in trained if images is not None]
        total += (statistics.fmean(trained) if trained else 0.0) + n_train * unit
    return total


def corrupted_fraction(run: dict, batch_size: int) -> float:
    """The fraction of the samples a run trained on up to its best validation whose label was corrupted."""
    at = run["steps"].index(run["best_step"])
    return run["corrupted_sent"][at] / (run["best_step"] * batch_size)


def report(store: Store, at: str, configs: list[Selection], seeds: list[int], tuning: list[int], root: Path,
           student: StudentConfig, teacher: TeacherConfig, shape: tuple[int, ...], n_train: int,
           label_noise: float | None = None) -> None:
    cells = store.data["cells"]
    base = cells[at + "baseline"]
    reported = report_seeds(seeds, tuning)
    chosen = set(chosen_on_validation(store, at, configs).values())
    config = store.data["config"]  # the irreducible-loss model's settings, where not the defaults
    # the thesis' columns only beside the thesis' setting: its 784-32-32-10 student on MNIST
    thesis = config.get("dataset", "mnist") == "mnist" and student.model == "mlp" and tuple(student.hidden) == (32, 32)
    irreducible = irreducible_config(config.get("irreducible_model", "mlp"),
                                     tuple(config.get("irreducible_hidden") or IRREDUCIBLE.hidden))
    column = lambda entry, key: [entry[key][str(k)] for k in reported]  # noqa: E731
    base_compute = column(base, "compute")
    rows = []
    for c in configs:
        e = cells[at + c.name]
        runs = store.runs(at + c.name)
        passes, compute = column(e, "backward_passes"), column(e, "compute")
        thesis_passes = column(e, "backward_passes_thesis_target")
        one_off = one_off_costs(store.data["references"], at, c, reported, student, teacher, shape, n_train,
                                irreducible)
        saving = [b - r for b, r in zip(base_compute, compute, strict=True) if b is not None and r is not None]
        payback = "-" if not one_off else (f"{one_off / statistics.fmean(saving):,.1f} runs"
                                           if saving and statistics.fmean(saving) > 0 else "never")
        e["one_off_compute"] = one_off
        noisy = [format_summary([100 * corrupted_fraction(runs[k], student.batch_size) for k in reported], 1)
                 ] if label_noise else []
        thesis_cells = [reached(thesis_passes), format_counts(thesis_passes),
                        _ratio(column(base, "backward_passes_thesis_target"), thesis_passes),
                        f"{e['thesis']['backward_passes']:,}" if e["thesis"]["backward_passes"] else "-"]
        rows.append([
            c.name + (" *" if c.name in chosen else ""),
            format_summary([runs[k]["test_accuracy"] for k in reported], 2), *noisy,
            *([e["thesis"]["accuracy"] or "-"] if thesis else []), reached(passes), format_counts(passes),
            _epochs(passes, student, n_train), _ratio(column(base, "backward_passes"), passes),
            format_counts(compute), _ratio(base_compute, compute), f"{one_off:,.0f}" if one_off else "-", payback,
            *(thesis_cells if thesis else []),
        ])
    store.save()
    tuned = f"tuning seeds {', '.join(map(str, tuning))}" if tuning else "the same seeds (no --tuning-seeds)"
    print(f"\nTable 3.1{', ' + at[:-1] if at else ''}: student test accuracy (%) at best validation over "
          f"{seed_text(reported)}, and the first sustained crossing ({SUSTAIN} evaluations in a row, every "
          f"{student.eval_every} passes) of the validation curve at the target, {base['target_accuracy']:.2f}% ("
          f"{_target_source(base)})" + (f", and at the thesis' {THESIS_TARGET}%" if thesis else ""))
    noisy_column = [f"corrupted sent % (of {100 * label_noise:g})"] if label_noise else []
    thesis_columns = [f"reached {THESIS_TARGET}", f"backward to {THESIS_TARGET}", "speedup", "thesis backward"]
    print(format_table(["config", "test acc", *noisy_column, *(["thesis"] if thesis else []), "reached",
                        "backward to target", "epochs", "speedup", "compute to target", "speedup", "one-off",
                        "pays back after", *(thesis_columns if thesis else [])], rows))
    unit = _cost_units(student, teacher, shape)
    print(f"backward/compute to target: mean over the seeds that reached (k/n); epochs: the same backward passes in "
          f"passes over the {n_train:,} training images (Loshchilov & Hutter's unit). speedup: baseline / row, paired "
          f"by seed over the seeds where both reached, geometric mean [95% t-interval]. compute = student "
          f"forwards (training, and on the stack where the measure reads them) + 2 x backward, in student "
          f"minibatch forwards. one-off: the teacher's training and its logits on every training image (computed "
          f"once, looked up per stack: a teacher scoring each stack would add {unit:.1f} x stack size per update "
          f"instead), and the irreducible-loss model's training and losses, where the row uses them; pays back "
          f"after: one-off / the per-run compute saved against the baseline." +
          (f" * = the rule's parameters chosen on validation on {tuned} (most seeds reaching the target, then the "
           f"largest paired speedup)." if chosen else "") +
          (" corrupted sent: of the samples a run trained on up to its best validation, the % whose training label "
           "was corrupted (uniform selection sends the noise level)." if label_noise else ""))
    _per_seed(cells, at, configs, reported)
    for key, what in TARGETS_OF.items():
        _pressure_figure(store, at, configs, key, reported, root, what)
    sizes = sorted({c.stack_size for c in configs} - {1})
    panels = []
    for size in sizes:
        curves = {}
        for c in configs:
            if c.stack_size not in (1, size):
                continue
            rs = [store.runs(at + c.name)[k] for k in reported]
            longest = max(rs, key=lambda r: len(r["steps"]))
            curves[c.name] = (longest["steps"], [r["val_accuracy"] for r in rs])
        panels.append((f"stack of {size} minibatches", curves))
    plot_panels(root / at / "figure_3_1.png", panels or [("baseline", {})], "student backward passes",
                "validation accuracy (%)", zoom=FIGURE_ZOOM)
    for kind, models in (("teachers'", "teacher"), ("irreducible-loss models'", "irreducible")):
        accuracies = store.data["references"].get(f"{at}{models}_test_accuracy", {})
        if accuracies:
            print(f"{kind} test accuracy: {', '.join(f'seed {k}: {v:.2f}%' for k, v in sorted(accuracies.items()))}")


def _per_seed(cells: dict, at: str, configs: list[Selection], seeds: list[int]) -> None:
    """Each row's speedups seed by seed: whether a rule is faster on every seed, which a mean cannot say."""
    base = cells[at + "baseline"]
    ratio = lambda entry, key, k: (f"{base[key][k] / entry[key][k]:.2f}x"  # noqa: E731
                                   if base[key][k] is not None and entry[key][k] is not None else "never")
    rows = [[c.name, *(f"{ratio(cells[at + c.name], 'backward_passes', str(k))} / "
                       f"{ratio(cells[at + c.name], 'compute', str(k))}" for k in seeds)]
            for c in configs if c.name != "baseline"]
    print("per seed: speedup to the target by backward passes / by per-run compute (baseline / row)")
    print(format_table(["config", *(f"seed {k}" for k in seeds)], rows))


def _epochs(passes: list, student: StudentConfig, n_train: int) -> str:
    """Mean backward passes of the seeds that reached, as epochs of the training pool."""
    reached_ = [p for p in passes if p is not None]
    return f"{statistics.fmean(reached_) * student.batch_size / n_train:.1f}" if reached_ else "never"


def _target_source(base: dict) -> str:
    """Where a table's target came from, so a table read at a chosen target does not claim the default's."""
    return "set by --target-accuracy" if base.get("target_given") else "the highest the baseline holds on every seed"


def _ratio(control: list, row: list) -> str:
    speedup = paired_ratio(control, row)
    return speedup.format(2, ratio=True) + f" (n={speedup.n})" if speedup else "-"


def _pressure_figure(store: Store, at: str, configs: list[Selection], key: str, seeds: list[int], root: Path,
                     what: str) -> None:
    """Paired speedup to ``what`` (``backward_passes<key>``) against the (finite) selection pressure, a line per
    rule run at every one, and the same rule sending the hardest (pressure inf) as a dashed reference; per seed
    where both the rule and the baseline reached."""
    cells = store.data["cells"]
    base = [cells[at + "baseline"][f"backward_passes{key}"][str(k)] for k in seeds]
    pressures = sorted({c.pressure for c in configs if c.name != "baseline" and math.isfinite(c.pressure)})
    lines: dict[str, dict[float, list[float]]] = {}
    for c in configs:
        if c.name.startswith("baseline"):
            continue
        row = [cells[at + c.name][f"backward_passes{key}"][str(k)] for k in seeds]
        per_seed = [b / r for b, r in zip(base, row, strict=True) if b is not None and r is not None]
        rule = dataclasses.replace(c, pressure=math.inf, anneal=0, floor=0.0).name
        rule += (f" anneal {c.anneal}" if c.anneal else "") + (f" floor {c.floor:g}" if c.floor else "")
        lines.setdefault(rule, {})[c.pressure] = per_seed
    sampled = {k: [v[p] for p in pressures] for k, v in lines.items() if all(v.get(p) for p in pressures)}
    hardest = {f"{k} (hardest)": [v[math.inf]] * len(pressures) for k, v in lines.items() if k in sampled
               and v.get(math.inf)}
    if len(pressures) > 1 and sampled:
        plot_sweep(root / at / f"speedup_vs_pressure{key}.png", "selection pressure", [f"{p:g}" for p in pressures],
                   sampled, f"speedup to {what}", references=hardest)




def _family(c: Selection) -> tuple:
    """The rule a candidate belongs to: its stack, measure (a learned teacher's policy, whatever its reward and
    seed), target and schedule."""
    measure = c.measure.split("_")[1] if c.measure.startswith("learned_") else c.measure
    return c.stack_size, measure, c.target, c.lr_schedule


def _rule(c: Selection) -> str:
    """A rule's line in a sweep's figure: its row's name without the parameters chosen per value (a learned
    teacher's reward and seed among them)."""
    name = dataclasses.replace(c, pressure=math.inf, anneal=0, floor=0.0, refresh=0).name
    return name.replace(c.measure, f"learned_{_family(c)[1]}") if c.measure.startswith("learned_") else name


def sweep_report(store: Store, swept, configs: list[Selection], seeds: list[int], tuning: list[int],
                 root: Path) -> None:
    """Against the swept value: each selection's test accuracy, and its speedup to each value's own target by
    per-run compute (paired by seed against that value's baseline, on the reported seeds), with the fraction of
    corrupted labels it sent where labels are noisy."""
    name, _, values = swept
    texts = [t for t, _ in values]
    reported = report_seeds(seeds, tuning)
    lines = {c.name: [[store.runs(f"{name}={t}/{c.name}")[k]["test_accuracy"] for k in reported]
                      for t in texts] for c in configs}
    print(f"\nSweep over {name}: student test accuracy (%), mean ± std over {seed_text(reported)}")
    print(format_table([name, *lines], [[t, *(format_summary(lines[c][i], 2) for c in lines)]
                                        for i, t in enumerate(texts)]))
    plot_sweep(root / f"sweep_{name}.png", name, texts, lines, "student test accuracy (%)")
    cells = store.data["cells"]
    compute = lambda t, c: [cells[f"{name}={t}/{c}"]["compute"][str(k)] for k in reported]  # noqa: E731
    speedups = {c.name: [paired_ratio(compute(t, "baseline"), compute(t, c.name)) for t in texts]
                for c in configs if c.name != "baseline"}
    given = cells[f"{name}={texts[0]}/baseline"].get("target_given")
    target = ("the target set by --target-accuracy" if given else "each value's own target (the highest validation "
              "accuracy its baseline holds on every seed)")
    print(f"\nSweep over {name}: speedup by per-run compute to {target}, baseline / row, paired by seed (n = seeds "
          f"where both reached), geometric mean [95% t-interval]")
    print(format_table([name, *speedups], [[t, *(s[i].format(2, ratio=True) + f" (n={s[i].n})" if s[i] else "never"
                                                 for s in speedups.values())] for i, t in enumerate(texts)]))
    # the figure: one line per rule, at each value the row chosen on the tuning seeds' validation (its * row)
    picked = [chosen_on_validation(store, f"{name}={t}/", configs) for t in texts]
    rules = {_rule(c): _family(c) for c in configs if c.name != "baseline"}
    sole = {_family(c): c.name for c in configs if c.name != "baseline"}  # a rule with one row: that row
    print(f"figure: one line per rule ({', '.join(rules)}), at each {name} its * row")
    plot_sweep(root / f"speedup_vs_{name}.png", name, texts,
               {rule: [[s.mean, s.low, s.high] if (s := speedups[p.get(family, sole[family])][i]) else []
                       for i, p in enumerate(picked)] for rule, family in rules.items()},
               "speedup by per-run compute (each rule's * row)", intervals=True)
    batch = store.data["config"]["batch_size"]
    if any(any(r.get("corrupted_sent", [0])[-1] for r in store.runs(f"{name}={t}/baseline").values()) for t in texts):
        sent = {c.name: [format_summary([100 * corrupted_fraction(store.runs(f"{name}={t}/{c.name}")[k], batch)
                                         for k in reported], 1) for t in texts] for c in configs}
        print(f"\nSweep over {name}: % of the samples sent up to best validation whose label was corrupted")
        print(format_table([name, *sent], [[t, *(sent[c][i] for c in sent)] for i, t in enumerate(texts)]))
