"""What a chapter 4 run is and what it yields: the communication levels, ``LanguageConfig`` (every field a flag
of ``benchmarks.language``) and ``RunResult``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from envs.base import above, at_least
from envs.language import INVERT, OVERLAPS, VIEWS, View, reading
from trainers.base import check_fields, option
from trainers.gumbel import TemperatureSchedule
from trainers.reinforce import Reinforce

ESTIMATORS = ("gumbel", "reinforce")


@dataclass(frozen=True)
class Level:
    """Who is trained on the other's message, whether that loss reaches the sender, and whether the
    student's probe also reads the received message (``decides``; beyond the thesis)."""

    student_receives: bool
    teacher_receives: bool
    feedback: bool
    decides: bool = False


LEVELS: dict[str, Level] = {
    "none": Level(False, False, False),  # MI only
    "receive": Level(True, False, False),  # student predicts the teacher's message; teacher untouched
    "feedback": Level(True, False, True),  # ... and that loss also trains the teacher's speaker
    "both": Level(True, True, True),  # symmetric: each predicts the other, gradients to both senders
    "decide": Level(True, True, True, decides=True),  # as both; the probe reads [features, received message]
    "read": Level(False, False, False, decides=True),  # decide's control: trains as none, reads as decide
}
THESIS_LEVELS = ("none", "receive", "feedback", "both")


@dataclass(frozen=True)
class LanguageConfig:
    """Hyper-parameters; values the thesis lost in extraction are our choices (docs/language.md)."""

    view: str = option(INVERT.kind, "how each agent sees the image (envs.language.View)", choices=VIEWS)
    noise: float = option(
        INVERT.noise,
        "invert: pixel inversion probability of each agent's mask; resample: "
        "probability that a pixel is replaced by 0 or 1, redrawn every step",
        read_with={"view": reading("noise")},
    )
    visible: float = option(
        INVERT.visible, "occlude: fraction of the pixels each agent sees", read_with={"view": reading("visible")}
    )
    overlap: str = option(
        INVERT.overlap,
        "occlude: the agents' pixel subsets drawn independently, disjoint, or the top and bottom rows",
        choices=OVERLAPS,
        read_with={"view": reading("overlap")},
    )
    message_length: int = option(32, "tokens per message")
    vocab_size: int = option(2, "symbols per token (2: a 32-bit message)")
    hidden: tuple[int, ...] = option((256, 256), "speaker hidden widths, e.g. 256,256")
    speaker_layer_norm: bool = option(False, "LayerNorm before each ReLU of the speaker")
    critic_hidden: int = option(256, "hidden width of the MI critics")
    batch_size: int = option(64, "images per step")
    steps: int = option(3000, "training steps")
    lr: float = option(1e-4, "Adam learning rate of speakers and critics")
    probe_lr: float = option(3e-3, "Adam learning rate of the student's linear probe")
    ce_weight: float = option(0.01, "communication cross-entropy weight at the one-way levels (receive, feedback)")
    ce_weight_two_way: float = option(0.005, "communication cross-entropy weight at level both")
    temperature: TemperatureSchedule = option(TemperatureSchedule(), "Gumbel-Softmax temperature schedule")
    straight_through: bool = option(False, "hard messages forward, soft gradients")
    estimator: str = option("gumbel", "speakers' gradients", choices=ESTIMATORS)
    entropy_weight: float = option(0.01, "REINFORCE's entropy bonus (per token, summed over the message)")
    baseline_decay: float = option(0.99, "REINFORCE's running-mean baseline decay")
    eval_every: int = option(100, "steps between evaluations")
    log_every: int = option(50, "steps between TensorBoard training scalars")

    def __post_init__(self) -> None:
        check_fields(self)
        self.partial_view()  # checks the view's settings
        at_least(1, **{n: getattr(self, n) for n in ("message_length", "batch_size", "steps", "eval_every",
                                                     "log_every", "critic_hidden")})
        at_least(2, vocab_size=self.vocab_size)
        above(0, lr=self.lr, probe_lr=self.probe_lr)
        at_least(0, ce_weight=self.ce_weight, ce_weight_two_way=self.ce_weight_two_way)
        Reinforce(self.entropy_weight, self.baseline_decay)  # checks its settings

    def partial_view(self) -> View:
        """The agents' view of an image, as the env defines it."""
        return View(self.view, self.noise, self.visible, self.overlap)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    """One (level, seed) run: the headline figure and the validation curve behind it."""

    test_accuracy: float
    best_val_accuracy: float
    best_step: int
    steps: list[int]
    val_accuracy: list[float]
