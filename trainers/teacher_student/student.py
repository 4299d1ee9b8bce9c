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

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from agents.teacher_student import CLASSIFIERS, classifier
from envs.base import above, at_least
from envs.data import Split, Splits
from envs.selection import MEASURES, OWN_LOSS, TARGETS, EpochStacks, Rule, Stack, draw, target_loss
from trainers.base import SCHEDULES, Trainer, adam, check_fields, generator, lr_factor, option, restore_generators
from trainers.population import Population
from trainers.probe import accuracy


@dataclass(frozen=True)
class Selection:
    """How the teacher picks the student's minibatch: the stack size, the rule (``envs.selection.Rule``:
    a measure, and the hardest or a draw by rank with a pressure, annealing and a floor) and the target.
    Stack size 0 ranks the whole training set (Loshchilov & Hutter's online batch selection; only a measure
    that reads the student's latest known losses can, as it needs no forward pass), after a first plain epoch
    that learns every loss; ``refresh`` > 0 recomputes every training image's loss each ``refresh`` backward
    passes (else a loss is as old as the sample's last visit)."""

    stack_size: int = 1
    measure: str = "random"
    target: str = "true"
    pressure: float = math.inf
    anneal: int = 0
    floor: float = 0.0
    lr_schedule: str = "constant"
    refresh: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.lr_schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.stack_size < 0 or self.refresh < 0:
            raise ValueError(f"stack size (0: the whole training set) and refresh must be >= 0, got "
                             f"{self.stack_size} and {self.refresh}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        self.rule  # noqa: B018 (validates the measure, pressure, anneal and floor)
        if (self.stack_size == 0 or self.refresh) and not MEASURES[self.measure].reads_own_loss:
            raise ValueError(f"the whole training set (stack size 0) and refresh are for a measure that reads the "
                             f"student's own losses ({', '.join(OWN_LOSS)}), not {self.measure}")

    @functools.cached_property
    def rule(self) -> Rule:
        """Built once per selection (the trainer asks for it at every step)."""
        return Rule(self.measure, self.pressure, self.anneal, self.floor)

    @property
    def name(self) -> str:
        """``baseline``, or ``stack<S>-<measure>-<target>`` with ``-rank<pressure>``, ``-anneal<passes>`` and
        ``-floor<floor>`` for sampled selection; ``-cosine`` or ``-linear`` for a decayed learning rate
        (the results' cell; the job beside a checkpoint keeps the selection itself)."""
        schedule = "" if self.lr_schedule == "constant" else f"-{self.lr_schedule}"
        if dataclasses.replace(self, lr_schedule="constant") == Selection():
            return "baseline" + schedule
        sampled = "" if math.isinf(self.pressure) else f"-rank{self.pressure:g}"
        sampled += (f"-anneal{self.anneal}" if self.anneal else "") + (f"-floor{self.floor:g}" if self.floor else "")
        sampled += f"-refresh{self.refresh}" if self.refresh else ""
        return f"stack{self.stack_size or 'all'}-{self.measure}-{self.target}{sampled}{schedule}"

    @property
    def width(self) -> int:
        """Minibatches in the stack the student sends per update (the whole-set ranking sends its batch)."""
        return self.stack_size or 1

    @property
    def uses_teacher(self) -> bool:
        return MEASURES[self.measure].reads_teacher or self.target == "soft"


OPTIMIZERS = ("adam", "adadelta")


@dataclass(frozen=True)
class StudentConfig:
    model: str = option("mlp", "student classifier: the ReLU MLP of --hidden widths, one of chapter 2's CNNs "
                        "(CIFAR-10), or Loshchilov & Hutter's MNIST CNN (lh-cnn)", choices=CLASSIFIERS)
    hidden: tuple[int, ...] = option((32, 32), "student hidden widths (784-32-32-10 in the thesis)",
                                     read_with={"model": ("mlp",)})
    batch_size: int = option(32, "minibatch size (what the teacher sends)")
    lr: float | None = option(None, "student's learning rate", default_text="1e-3 with adam, 1.0 with adadelta "
                              "(Zeiler's: no learning rate)")
    optimizer: str = option("adam", "student's optimizer (Loshchilov & Hutter compare both)", choices=OPTIMIZERS)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW; RHO-LOSS's optimizer is AdamW with 0.01)")
    temperature: float = option(1.0, "temperature of the teacher's soft labels")
    patience: int = option(20, "epochs (of backward passes) without validation gain before a run stops")
    max_epochs: int = option(100, "epochs (of backward passes) at most")
    eval_every: int = option(100, "backward passes between evaluations: one uniform grid for every run, on which "
                             "targets are crossed")
    dropout: float = option(0.0, "dropout after each hidden layer (the teacher's 0.5; the student has none)")

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(1, **{n: getattr(self, n) for n in ("batch_size", "patience", "max_epochs", "eval_every")})
        above(0, temperature=self.temperature)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr is None:  # frozen: the default follows the optimizer
            object.__setattr__(self, "lr", 1.0 if self.optimizer == "adadelta" else 1e-3)
        above(0, lr=self.lr)
        if self.weight_decay < 0 or (self.weight_decay and self.optimizer != "adam"):
            raise ValueError(f"weight_decay must be >= 0 and goes with adam (AdamW), got {self.weight_decay} with "
                             f"{self.optimizer}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class StudentResult:
    test_accuracy: float  # at the best validation accuracy
    best_val_accuracy: float
    best_step: int  # backward passes to the best validation checkpoint
    stopped_step: int
    steps: list[int] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    counters_at_best: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    corrupted_sent: list[int] = field(default_factory=list)  # samples with a corrupted label trained on, by ``steps``


def image_shape(splits: Splits) -> tuple[int, ...]:
    """The shape of one image of ``splits`` (a flat vector where the splits do not say)."""
    return tuple(splits.shape) or (splits.train.images.shape[1],)


def counters_at(selection: Selection, passes: int, epoch: int) -> dict[str, int]:
    """Minibatches of work after ``passes`` student updates under ``selection`` (see module doc), with ``epoch``
    minibatches in the training set: a refresh of the student's own losses is a forward pass over all of them."""
    refreshes = passes // selection.refresh if selection.refresh else 0
    return {
        "backward_passes": passes,
        "student_forward_passes": passes * (1 + selection.width * MEASURES[selection.measure].reads_student)
        + refreshes * epoch,
        "teacher_forward_passes": passes * selection.width * selection.uses_teacher,
    }


def forward_inclusive(counters: dict[str, int]) -> int:
    """Student forward passes plus two per backward pass (a backward costs about two forwards), in
    minibatch forwards of the student (the teacher's forwards are counted apart, in student units)."""
    return counters["student_forward_passes"] + 2 * counters["backward_passes"]


class StudentTrainer(Trainer):
    """Trains ``runs`` = [(Selection, seed), ...]; ``teacher_logits[seed]`` holds the frozen teacher's
    logits for every training image (not needed when no run uses the teacher: the teacher itself is
    trained this way, as the baseline selection of a student with dropout); ``irreducible[seed]`` the
    irreducible-loss model's loss on every training image (for ``reducible_holdout``); ``corrupted`` marks the
    training images whose label was corrupted (``envs.noise``), counted when sent."""

    def __init__(
        self,
        config: StudentConfig,
        splits: Splits,
        runs: Sequence[tuple[Selection, int]],
        teacher_logits: dict[int, torch.Tensor] | None = None,
        irreducible: dict[int, torch.Tensor] | None = None,
        corrupted: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        if not runs:
            raise ValueError("no runs to train")
        n = len(splits.train.images)
        if config.batch_size * max(sel.width for sel, _ in runs) > n:
            raise ValueError(f"a stack of batch size x stack size samples must fit in the {n} training images")
        if any(sel.uses_teacher and seed not in (teacher_logits or {}) for sel, seed in runs):
            raise ValueError("selections that use the teacher need its logits (for their seed)")
        if irreducible is None and any(MEASURES[sel.measure].reads_irreducible for sel, _ in runs):
            raise ValueError("reducible_holdout needs the irreducible-loss model's losses (irreducible=...)")
        super().__init__((config, splits, runs, teacher_logits, irreducible, corrupted), runs, device,
                         config.eval_every)
        self.config, self.splits = config, splits.to(device)
        self.epoch = n // config.batch_size
        shape = image_shape(splits)
        models = []
        for _, seed in runs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models.append(classifier(shape, config.model, config.hidden, dropout=config.dropout))
        has = lambda kind: any(isinstance(m, kind) for m in models[0].modules())  # noqa: E731
        dropout = [generator(20_000 + seed) for _, seed in runs] if has(torch.nn.Dropout) else None
        # batch norm and max-pooling under vmap ran a population of lh-cnn students 2x slower than one at a time
        self.students = Population(models, dropout, vectorized=not has(torch.nn.BatchNorm2d)).to(device)
        self.optimizer = self._optimizer()
        classes = models[0][-1].out_features
        logits = [teacher_logits[seed] if seed in (teacher_logits or {}) else torch.zeros(n, classes)
                  for _, seed in runs]
        self.teacher_logits = torch.stack(logits).to(device)  # [R, n, classes]
        self.teacher_probs = torch.softmax(self.teacher_logits, -1)
        losses = [torch.zeros(n) if irreducible is None or seed not in irreducible else irreducible[seed]
                  for _, seed in runs]
        self.irreducible = torch.stack(losses).to(device)  # [R, n]
        self.corrupted = (torch.zeros(n, dtype=torch.bool) if corrupted is None else corrupted).to(device)
        self.corrupted_sent = torch.zeros(len(runs), dtype=torch.long, device=device)  # per run, all runs
        self.own_losses = torch.full((len(runs), n), math.inf, device=device)  # [R, n]: each one's latest loss
        self.data_generators = [generator(seed) for _, seed in runs]
        self.measure_generators = [generator(10_000 + seed) for _, seed in runs]
        self.stacks = [EpochStacks(n, g) for g in self.data_generators]
        self.history = [StudentResult(float("nan"), -1.0, 0, 0) for _ in runs]
        self.best: list[dict[str, torch.Tensor]] = [{} for _ in runs]
        self._index_runs()

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adadelta":
            return torch.optim.Adadelta(self.students.parameters(), lr=cfg.lr, rho=0.95)  # Lasagne's, L&H's
        return adam(self.students.parameters(), self.device, weight_decay=cfg.weight_decay, lr=cfg.lr)

    @property
    def batch(self) -> list[tuple[Selection, int]]:
        """The runs still training, in batch order."""
        return [self.runs[r] for r in self._alive]

    def _index_runs(self) -> None:
        """Per-run constants derived from the runs still training."""
        runs, batch, dev = self.batch, self.config.batch_size, self.device
        self.stack = max(sel.width for sel, _ in runs) * batch
        self.valid = torch.stack([torch.arange(self.stack, device=dev) < sel.width * batch for sel, _ in runs])
        self.whole = [r for r, (sel, _) in enumerate(runs) if sel.stack_size == 0]
        self.own = torch.tensor([r for r, (sel, _) in enumerate(runs) if MEASURES[sel.measure].reads_own_loss],
                                dtype=torch.long, device=dev)
        self.refreshed = [r for r, (sel, _) in enumerate(runs) if sel.refresh]
        self.soft = torch.tensor([sel.target == "soft" for sel, _ in runs], device=dev).view(-1, 1, 1)
        self.decayed = [(r, sel.lr_schedule) for r, (sel, _) in enumerate(runs) if sel.lr_schedule != "constant"]
        # the student predicts on its stack only where the measure reads it, grouped by stack size
        reads = [r for r, (sel, _) in enumerate(runs) if MEASURES[sel.measure].reads_student]
        self.prediction_groups = [
            (size, torch.tensor([r for r in reads if runs[r][0].stack_size == size], device=dev))
            for size in sorted({runs[r][0].stack_size for r in reads})
        ]

    def drop(self, finished: list[int]) -> None:
        """Drop finished runs from the batch: every other run continues exactly as it would have."""
        positions = [i for i, r in enumerate(self._alive) if r not in finished]
        old_params, old_state = self.students.parameters(), self.optimizer.state
        self.students.keep(positions)
        self.optimizer = self._optimizer()
        for old, new in zip(old_params, self.students.parameters(), strict=True):
            if old in old_state:
                state = old_state[old]
                self.optimizer.state[new] = {k: v.clone() if k == "step" else v[positions].clone()
                                             for k, v in state.items()}
        self.teacher_logits, self.teacher_probs = self.teacher_logits[positions], self.teacher_probs[positions]
        self.irreducible, self.own_losses = self.irreducible[positions], self.own_losses[positions]
        for name in ("data_generators", "measure_generators", "stacks"):
            setattr(self, name, [getattr(self, name)[i] for i in positions])
        self._alive = [self._alive[i] for i in positions]
        self._index_runs()

    def _stack_indices(self) -> torch.Tensor:
        """Next ``stack_size`` minibatches of each run's epoch-wise shuffled data, padded to one width; a run
        ranking the whole training set draws its batch from it instead (after its first, plain epoch)."""
        rows = []
        for r, ((sel, _), stacks) in enumerate(zip(self.batch, self.stacks, strict=True)):
            if r in self.whole and self.step >= self.epoch:
                take = self._draw_whole(r, sel).cpu()
            else:
                take = stacks.next(sel.width * self.config.batch_size)
            rows.append(torch.cat([take, take[:1].expand(self.stack - len(take))]))
        return torch.stack(rows).to(self.device)

    def _draw_whole(self, r: int, sel: Selection) -> torch.Tensor:
        """A batch drawn by the rank of run ``r``'s scores over the whole training set, from its latest known losses
        (and the teacher's, with ``own_reducible``): the sample of rank ``i`` of ``n`` is ``pressure ** (i / n)``
        times less likely than the highest (``Rule.probabilities`` over every training image; Loshchilov & Hutter's
        selection). No measure of the whole set reads the student's predictions, so they stand in as uniform."""
        teacher = self.teacher_probs[r]
        whole = Stack(teacher, torch.full_like(teacher, 1.0 / teacher.shape[-1]), self.splits.train.labels,
                      self.irreducible[r], self.step, self.own_losses[r])
        scores = MEASURES[sel.measure](whole, self.measure_generators[r])
        order = scores.argsort(descending=True, stable=True)
        if math.isinf(sel.pressure):
            return order[: self.config.batch_size]
        p = sel.rule.by_rank(len(scores), self.step).to(scores.device)
        return order[draw(p, self.config.batch_size, self.measure_generators[r])]

    def _choose(self, stack: Stack) -> torch.Tensor:
        """Each run's rule picks ``batch_size`` samples of its stack (``stack`` has a leading run dim)."""
        chosen = []
        for r, (sel, _) in enumerate(self.batch):
            if r in self.whole:  # the stack is the batch drawn
                chosen.append(torch.arange(self.config.batch_size, device=self.device))
                continue
            mine = Stack(stack.teacher_probs[r], stack.student_probs[r], stack.labels[r], stack.irreducible[r],
                         self.step, stack.own_loss[r])
            chosen.append(sel.rule(mine, self.config.batch_size, self.measure_generators[r], self.valid[r]))
        return torch.stack(chosen)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One teacher selection and one student update for every run; returns the per-run loss."""
        cfg, train = self.config, self.splits.train
        idx = self._stack_indices()  # [R, stack]
        t_logits = torch.gather(self.teacher_logits, 1, idx.unsqueeze(-1).expand(-1, -1, self.teacher_logits.shape[-1]))
        s_probs = torch.full(t_logits.shape, 1.0 / t_logits.shape[-1], device=self.device)  # for measures ignoring it
        with torch.no_grad():
            for size, rows in self.prediction_groups:
                n = size * cfg.batch_size
                s_probs[rows, :n] = torch.softmax(self.students.rows(rows, train.images[idx[rows, :n]]), -1)
        t_probs = torch.gather(self.teacher_probs, 1, idx.unsqueeze(-1).expand(-1, -1, t_logits.shape[-1]))
        stack = Stack(t_probs, s_probs, train.labels[idx], torch.gather(self.irreducible, 1, idx), self.step,
                      torch.gather(self.own_losses, 1, idx))
        chosen = self._choose(stack)
        picked = torch.gather(idx, 1, chosen)
        picked_t = torch.gather(t_logits, 1, chosen.unsqueeze(-1).expand(-1, -1, t_logits.shape[-1]))
        labels = train.labels[picked]
        self.corrupted_sent[self._alive] += self.corrupted[picked].sum(-1)
        targets = torch.where(self.soft, TARGETS["soft"](picked_t, labels, cfg.temperature),
                              TARGETS["true"](picked_t, labels, cfg.temperature))
        per_sample = target_loss(self.students(train.images[picked]), targets)
        loss = per_sample.mean(-1)
        if len(self.own):  # what this pass learnt of the samples it sent: their latest known loss
            self.own_losses[self.own] = self.own_losses[self.own].scatter(1, picked[self.own],
                                                                          per_sample.detach()[self.own])
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self._step_optimizer()
        self.step += 1
        self._refresh()
        return {"train/loss": loss.detach()}

    @torch.no_grad()
    def _refresh(self) -> None:
        """Recompute every training image's loss for the runs whose ``refresh`` period ends at this step."""
        due = [r for r in self.refreshed if self.step % self.batch[r][0].refresh == 0]
        if not due:
            return
        rows, train = torch.tensor(due, device=self.device), self.splits.train
        for start in range(0, len(train.labels), 5000):
            images, labels = train.images[start : start + 5000], train.labels[start : start + 5000]
            logits = self.students.rows(rows, images.expand(len(due), *images.shape))
            true = TARGETS["true"](logits, labels.expand(len(due), -1), self.config.temperature)
            self.own_losses[rows, start : start + len(labels)] = target_loss(logits, true)  # as a training pass has it

    def _step_optimizer(self) -> None:
        """Adam's step; runs with a decayed learning rate take the same step scaled by their schedule's factor
        (Adam's update is proportional to its learning rate and its moments do not depend on it), so runs at
        a constant rate step exactly as they would alone."""
        if not self.decayed:
            self.optimizer.step()
            return
        rows = torch.tensor([r for r, _ in self.decayed], device=self.device)
        factor = torch.tensor([lr_factor(s, self.step / self.total_steps()) for _, s in self.decayed],
                              device=self.device)
        before = [p.detach()[rows].clone() for p in self.students.parameters()]
        self.optimizer.step()
        with torch.no_grad():
            for p, old in zip(self.students.parameters(), before, strict=True):
                shape = (-1,) + (1,) * (p.dim() - 1)
                p[rows] = old + factor.view(shape) * (p[rows] - old)

    def total_steps(self) -> int:
        return self.config.max_epochs * self.epoch

    def evaluate(self, split: Split, rows: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Accuracy (%) on ``split`` of every student still training, or of those at positions ``rows``."""
        students = self.students.eval()
        if rows is None:
            accuracies = accuracy(students.shared, split)
        else:
            picked = torch.tensor(rows, device=self.device)
            accuracies = accuracy(lambda x: students.rows(picked, x.expand(len(rows), *x.shape)), split)
        self.students.train()
        return {"accuracy": accuracies}

    def evaluation(self) -> dict[str, torch.Tensor]:
        """Validation accuracy of every run, and test accuracy of the runs at a new best validation (the only
        test accuracy a run reports); a run's weights are kept at its best validation."""
        val = self.evaluate(self.splits.val)["accuracy"].tolist()
        improved = [i for i, r in enumerate(self._alive) if val[i] > self.history[r].best_val_accuracy]
        test = self.evaluate(self.splits.test, improved)["accuracy"].tolist() if improved else []
        for i, r in enumerate(self._alive):
            res = self.history[r]
            res.steps.append(self.step)
            res.val_accuracy.append(val[i])
            res.corrupted_sent.append(int(self.corrupted_sent[r]))
            res.stopped_step = self.step
        for i, accuracy_ in zip(improved, test, strict=True):
            res = self.history[self._alive[i]]
            res.best_val_accuracy, res.test_accuracy, res.best_step = val[i], accuracy_, self.step
            self.best[self._alive[i]] = self.students.member(i)
        return {"val/accuracy": torch.tensor(val)}

    def stopping(self) -> list[int]:
        """Runs without validation gain for ``patience`` epochs."""
        patience = self.config.patience * self.epoch
        return [r for r in self._alive if self.step - self.history[r].best_step >= patience]

    def result(self, run: int) -> StudentResult:
        res = dataclasses.replace(self.history[run])
        selection = self.runs[run][0]
        res.counters_at_best = counters_at(selection, res.best_step, self.epoch)
        res.counters = counters_at(selection, res.stopped_step, self.epoch)
        return res

    def best_weights(self, run: int) -> dict[str, torch.Tensor]:
        return self.best[run]

    def parameters_by_name(self) -> dict[str, torch.Tensor]:
        return self.students.params

    def _generators(self) -> list[torch.Generator]:
        return [*self.data_generators, *self.measure_generators, *(self.students.generators or [])]

    def _state(self) -> dict:
        return {
            "students": self.students.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self._generators()],
            "orders": [s.order for s in self.stacks],
            "history": [dataclasses.asdict(h) for h in self.history],
            "best": self.best,
            "corrupted_sent": self.corrupted_sent,
            "own_losses": self.own_losses,
        }

    def _load_state(self, state: dict) -> None:
        self.students.load_state_dict(state["students"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_generators(self._generators(), state["generators"])
        for stacks, order in zip(self.stacks, state["orders"], strict=True):
            stacks.order = order
        self.history = [StudentResult(**h) for h in state["history"]]
        self.best = state["best"]
        self.corrupted_sent = state["corrupted_sent"].to(self.device)
        self.own_losses = state["own_losses"].to(self.device)
