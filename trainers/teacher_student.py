"""Students trained on what a frozen teacher selects from their stack of minibatches (thesis ch. 3).

Every (selection, seed) pair is one run; all runs train at once as a ``Population``. Per step, run
``r`` sends ``stack_size`` minibatches of its epoch-wise shuffled data; the teacher scores them with the
run's difficulty measure (its own predictions against the student's) and the student takes one Adam
step on the ``batch_size`` hardest, with soft or true targets. The baseline is a stack of one
minibatch, random selection and true labels: plain SGD on shuffled data.

Counters (per run, in minibatches of ``batch_size``) are what a skeptic asks for:
``backward_passes`` (student updates), ``student_forward_passes`` (predictions sent to the teacher,
only where the measure reads them, plus the training forward) and ``teacher_forward_passes`` (the
teacher's predictions on the stack, where the measure or the target needs them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from agents.teacher_student import student
from envs.data import Splits
from envs.teacher_student import MEASURES, TARGETS, USES_STUDENT, select_hardest, target_loss
from trainers.population import Population
from trainers.probe import accuracy


@dataclass(frozen=True)
class Selection:
    """How the teacher picks the student's minibatch."""

    stack_size: int = 1
    measure: str = "random"
    target: str = "true"

    def __post_init__(self) -> None:
        if self.stack_size < 1:
            raise ValueError(f"stack size must be >= 1, got {self.stack_size}")
        if self.measure not in MEASURES:
            raise ValueError(f"unknown measure {self.measure!r}; choose from {', '.join(MEASURES)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")

    @property
    def name(self) -> str:
        if self == Selection():
            return "baseline"
        return f"stack{self.stack_size}-{self.measure}-{self.target}"

    @property
    def uses_teacher(self) -> bool:
        return self.measure != "random" or self.target == "soft"


@dataclass(frozen=True)
class StudentConfig:
    hidden: tuple[int, ...] = (32, 32)
    batch_size: int = 32
    lr: float = 1e-3
    temperature: float = 1.0  # of the teacher's soft labels
    patience: int = 20  # epochs (of backward passes) without validation improvement
    max_epochs: int = 100
    eval_every: int = 250  # backward passes

    def __post_init__(self) -> None:
        if min(self.batch_size, self.patience, self.max_epochs, self.eval_every) < 1 or self.temperature <= 0:
            raise ValueError("batch size, patience, max epochs and eval interval must be >= 1; temperature > 0")


@dataclass
class StudentResult:
    test_accuracy: float  # at the best validation accuracy
    best_val_accuracy: float
    best_step: int  # backward passes to the best validation checkpoint
    stopped_step: int
    steps: list[int] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    test_accuracy_curve: list[float] = field(default_factory=list)
    counters_at_best: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def steps_to_reach(self, test_accuracy: float) -> int | None:
        """Backward passes until the test accuracy first reached ``test_accuracy`` (None if never)."""
        return next((s for s, a in zip(self.steps, self.test_accuracy_curve, strict=True) if a >= test_accuracy), None)


Logger = Callable[[int, dict[str, dict[int, float]]], None]
"""Receives ``(step, {tag: {run index: value}})`` for the runs still training."""


def per_step_counters(selection: Selection) -> dict[str, int]:
    """Minibatches of work per student update under ``selection`` (see module doc)."""
    return {
        "backward_passes": 1,
        "student_forward_passes": 1 + selection.stack_size * (selection.measure in USES_STUDENT),
        "teacher_forward_passes": selection.stack_size * selection.uses_teacher,
    }


class StudentTrainer:
    """Trains ``runs`` = [(Selection, seed), ...]; ``teacher_logits[seed]`` holds the frozen teacher's
    logits for every training image."""

    def __init__(self, config: StudentConfig, splits: Splits, runs: Sequence[tuple[Selection, int]],
                 teacher_logits: dict[int, torch.Tensor]):  # fmt: skip
        if not runs:
            raise ValueError("no runs to train")
        n = len(splits.train.images)
        if config.batch_size * max(sel.stack_size for sel, _ in runs) > n:
            raise ValueError(f"a stack of batch size x stack size samples must fit in the {n} training images")
        self.config, self.splits, self.runs = config, splits, list(runs)
        pixels = splits.train.images.shape[1]
        models = []
        for _, seed in runs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models.append(student(pixels, config.hidden))
        self.students = Population(models)
        self.optimizer = torch.optim.Adam(self.students.parameters(), lr=config.lr, fused=True)
        self.teacher_logits = torch.stack([teacher_logits[seed] for _, seed in runs])  # [R, n, classes]
        self.teacher_probs = torch.softmax(self.teacher_logits, -1)
        self.data_generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
        self.measure_generators = [torch.Generator().manual_seed(10_000 + seed) for _, seed in runs]
        self.orders = [torch.empty(0, dtype=torch.long) for _ in runs]
        self._index_runs()
        self.step = 0

    def _index_runs(self) -> None:
        """Per-run constants derived from ``self.runs`` (rebuilt when stopped runs leave the batch)."""
        runs, batch = self.runs, self.config.batch_size
        self.stack = max(sel.stack_size for sel, _ in runs) * batch
        self.valid = torch.stack([torch.arange(self.stack) < sel.stack_size * batch for sel, _ in runs])
        self.soft = torch.tensor([sel.target == "soft" for sel, _ in runs]).view(-1, 1, 1)
        # the student predicts on its stack only where the measure reads it, grouped by stack size
        reads = [r for r, (sel, _) in enumerate(runs) if sel.measure in USES_STUDENT]
        self.prediction_groups = [
            (size, torch.tensor([r for r in reads if runs[r][0].stack_size == size]))
            for size in sorted({runs[r][0].stack_size for r in reads})
        ]

    def _keep(self, positions: list[int]) -> None:
        """Drop finished runs from the batch: every other run continues exactly as it would have."""
        old_params, old_state = self.students.parameters(), self.optimizer.state
        self.students.keep(positions)
        self.optimizer = torch.optim.Adam(self.students.parameters(), lr=self.config.lr, fused=True)
        for old, new in zip(old_params, self.students.parameters(), strict=True):
            if old in old_state:
                state = old_state[old]
                self.optimizer.state[new] = {k: v.clone() if k == "step" else v[positions].clone()
                                             for k, v in state.items()}  # fmt: skip
        self.teacher_logits, self.teacher_probs = self.teacher_logits[positions], self.teacher_probs[positions]
        for name in ("runs", "data_generators", "measure_generators", "orders"):
            setattr(self, name, [getattr(self, name)[i] for i in positions])
        self._index_runs()

    def _stack_indices(self) -> torch.Tensor:
        """Next ``stack_size`` minibatches of each run's epoch-wise shuffled data, padded to one width."""
        n, rows = len(self.splits.train.images), []
        for r, (sel, _) in enumerate(self.runs):
            need = sel.stack_size * self.config.batch_size
            if len(self.orders[r]) < need:
                self.orders[r] = torch.cat([self.orders[r], torch.randperm(n, generator=self.data_generators[r])])
            take, self.orders[r] = self.orders[r][:need], self.orders[r][need:]
            rows.append(torch.cat([take, take[:1].expand(self.stack - need)]))
        return torch.stack(rows)

    def _scores(self, teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> torch.Tensor:
        scores = torch.empty(teacher_probs.shape[:-1])
        for r, (sel, _) in enumerate(self.runs):
            scores[r] = MEASURES[sel.measure](teacher_probs[r], student_probs[r], self.measure_generators[r])
        return scores

    def train_step(self) -> torch.Tensor:
        """One teacher selection and one student update for every run; returns the per-run loss."""
        cfg, train = self.config, self.splits.train
        idx = self._stack_indices()  # [R, stack]
        t_logits = torch.gather(self.teacher_logits, 1, idx.unsqueeze(-1).expand(-1, -1, self.teacher_logits.shape[-1]))
        s_probs = torch.full(t_logits.shape, 1.0 / t_logits.shape[-1])  # unused by measures that ignore it
        with torch.no_grad():
            for size, rows in self.prediction_groups:
                n = size * cfg.batch_size
                s_probs[rows, :n] = torch.softmax(self.students.rows(rows, train.images[idx[rows, :n]]), -1)
        t_probs = torch.gather(self.teacher_probs, 1, idx.unsqueeze(-1).expand(-1, -1, t_logits.shape[-1]))
        chosen = select_hardest(self._scores(t_probs, s_probs), cfg.batch_size, self.valid)
        picked = torch.gather(idx, 1, chosen)
        picked_t = torch.gather(t_logits, 1, chosen.unsqueeze(-1).expand(-1, -1, t_logits.shape[-1]))
        labels = train.labels[picked]
        targets = torch.where(self.soft, TARGETS["soft"](picked_t, labels, cfg.temperature),
                              TARGETS["true"](picked_t, labels, cfg.temperature))  # fmt: skip
        loss = target_loss(self.students(train.images[picked]), targets).mean(-1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def counters(self, r: int, steps: int) -> dict[str, int]:
        """Run ``r``'s (position in the current batch) counters after ``steps`` backward passes."""
        return {k: v * steps for k, v in per_step_counters(self.runs[r][0]).items()}

    def fit(
        self,
        progress: Callable[[int], None] | None = None,
        logger: Logger | None = None,
        on_finish: Callable[[int, StudentResult], None] | None = None,
    ) -> list[StudentResult]:
        """Train until every run stopped (``patience`` epochs without validation gain) or ``max_epochs``;
        stopped runs leave the batch and are handed to ``on_finish(run index, result)`` at once (so a caller
        can save them before the others end). ``logger`` gets ``(step, {tag: {run index: value}})``."""
        cfg = self.config
        epoch = len(self.splits.train.images) // cfg.batch_size
        patience, limit = cfg.patience * epoch, cfg.max_epochs * epoch
        selections = [sel for sel, _ in self.runs]
        results = [StudentResult(float("nan"), -1.0, 0, 0) for _ in self.runs]
        alive = list(range(len(self.runs)))  # original index of each run still in the batch
        while alive and self.step < limit:
            loss = self.train_step().tolist()
            if progress:
                progress(1)
            if self.step % cfg.eval_every and self.step != limit:
                continue
            model = self.students.eval().shared
            val, test = accuracy(model, self.splits.val).tolist(), accuracy(model, self.splits.test).tolist()
            self.students.train()
            if logger:
                logger(self.step, {tag: dict(zip(alive, values, strict=True)) for tag, values in
                                   (("train/loss", loss), ("val/accuracy", val), ("test/accuracy", test))})  # fmt: skip
            keep = []
            for i, r in enumerate(alive):
                res = results[r]
                res.steps.append(self.step)
                res.val_accuracy.append(val[i])
                res.test_accuracy_curve.append(test[i])
                res.stopped_step = self.step
                if val[i] > res.best_val_accuracy:
                    res.best_val_accuracy, res.test_accuracy, res.best_step = val[i], test[i], self.step
                if self.step - res.best_step < patience and self.step < limit:
                    keep.append(i)
            if len(keep) < len(alive):
                for r in (r for i, r in enumerate(alive) if i not in keep):
                    self._finish(selections[r], results[r])
                    if on_finish:
                        on_finish(r, results[r])
                alive = [alive[i] for i in keep]
                if keep:
                    self._keep(keep)
        return results

    @staticmethod
    def _finish(selection: Selection, result: StudentResult) -> None:
        per_step = per_step_counters(selection)
        result.counters_at_best = {k: v * result.best_step for k, v in per_step.items()}
        result.counters = {k: v * result.stopped_step for k, v in per_step.items()}
