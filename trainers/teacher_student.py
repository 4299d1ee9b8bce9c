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
from trainers.teacher import accuracy


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
        self.stack = max(sel.stack_size for sel, _ in runs) * config.batch_size
        self.valid = torch.stack([torch.arange(self.stack) < sel.stack_size * config.batch_size for sel, _ in runs])
        self.soft = torch.tensor([sel.target == "soft" for sel, _ in runs]).view(-1, 1, 1)
        # the student predicts on its stack only where the measure reads it, grouped by stack size
        sizes = sorted({sel.stack_size for sel, _ in runs if sel.measure in USES_STUDENT})
        self.prediction_groups = [
            (
                size,
                torch.tensor(
                    [r for r, (sel, _) in enumerate(runs) if sel.measure in USES_STUDENT and sel.stack_size == size]
                ),
            )
            for size in sizes
        ]
        per_step = {
            "backward_passes": [1 for _ in runs],
            "student_forward_passes": [1 + sel.stack_size * (sel.measure in USES_STUDENT) for sel, _ in runs],
            "teacher_forward_passes": [sel.stack_size * sel.uses_teacher for sel, _ in runs],
        }
        self.per_step = per_step
        self.step = 0

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
        return {k: v[r] * steps for k, v in self.per_step.items()}

    def fit(self, progress: Callable[[int], None] | None = None,
            logger: Callable[[int, dict[str, list[float]]], None] | None = None) -> list[StudentResult]:  # fmt: skip
        """Train until every run stopped (``patience`` epochs without validation gain) or ``max_epochs``."""
        cfg = self.config
        epoch = len(self.splits.train.images) // cfg.batch_size
        patience, limit = cfg.patience * epoch, cfg.max_epochs * epoch
        results = [StudentResult(float("nan"), -1.0, 0, 0) for _ in self.runs]
        active = set(range(len(self.runs)))
        while active and self.step < limit:
            loss = self.train_step()
            if progress:
                progress(1)
            if self.step % cfg.eval_every and self.step != limit:
                continue
            model = self.students.eval().shared
            val, test = accuracy(model, self.splits.val).tolist(), accuracy(model, self.splits.test).tolist()
            self.students.train()
            if logger:
                logger(self.step, {"train/loss": loss.tolist(), "val/accuracy": val, "test/accuracy": test})
            for r in sorted(active):
                res = results[r]
                res.steps.append(self.step)
                res.val_accuracy.append(val[r])
                res.test_accuracy_curve.append(test[r])
                if val[r] > res.best_val_accuracy:
                    res.best_val_accuracy, res.test_accuracy, res.best_step = val[r], test[r], self.step
                if self.step - res.best_step >= patience or self.step >= limit:
                    active.discard(r)
                res.stopped_step = self.step
        for r, res in enumerate(results):
            res.counters_at_best = self.counters(r, res.best_step)
            res.counters = self.counters(r, res.stopped_step)
        return results
