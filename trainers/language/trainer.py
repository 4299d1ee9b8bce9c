"""Gumbel-Softmax language trainer (thesis ch. 4): MI max-max objective plus the communication levels.

Every (level, seed) pair is one run; all runs train at once as a ``Population`` batch. Runs sharing a
seed share masks, initial weights, data order and Gumbel noise, so levels are compared on paired draws.

Per agent ``a`` with view ``x_a`` and message ``s_a`` (Gumbel-Softmax of the speaker's logits):

- MI term (section 4.2.2): a critic tells joint pairs ``(x_a, s_a)`` from pairs of the product of
  marginals ``(x'_a, s_a)`` (``x'_a`` another image of the batch, whose own message is not used) with
  the vanilla GAN loss; the speaker minimises the *same* loss (max-max, not min-max).
- Communication term (eq. 4.2.5): ``-log p(s_other | x_a)``, the received message scored by the
  receiver's own token distribution, summed over tokens. Its weight and whether its gradient reaches
  the sender through ``s_other`` depend on the level (``LEVELS``).

With ``estimator="reinforce"`` the messages are exact discrete samples (no relaxation, no gradient
through them): each speaker is trained by REINFORCE (``trainers.reinforce``) on the per-message reward
``-(MI loss)`` minus, where the level feeds back, the receiver's weighted cross-entropy on the message;
critics and receivers train on the sampled messages as usual.

A linear probe reads the student's last hidden layer (gradient stopped) and is trained alongside on
labels; the reported figure is its test accuracy at its best validation accuracy. At level ``decide``
(beyond the thesis) the agents train as at ``both`` and the probe also reads the received hard
message, so the channel can pass on what the student's own view lacks; its control ``read`` trains as
``none`` and reads the message the same way (what reading an untrained-for channel gives). The agents' views are the
env's (``envs.language.View``: the thesis' inversion, or occluded or resampled views that lose
information).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from agents.language import Critic, LinearProbe, Speaker
from envs.data import Split, Splits
from envs.language import AGENTS, communication_loss, exchange, fixed_uniform, views
from trainers.base import Trainer, adam, generator, restore_generators
from trainers.gumbel import gumbel_softmax, hard_message, sampled_message
from trainers.language.config import LEVELS, LanguageConfig, RunResult
from trainers.language.speaker_check import check_speaker
from trainers.population import Population
from trainers.reinforce import Reinforce

TEACHER, STUDENT = AGENTS


def run_modules(seed: int, config: LanguageConfig, pixels: int, speaker_cls: type):
    """One run's freshly initialised ``(speakers, critics, probe, message_probe)``, from its seed alone
    (so the levels of one seed start from the same weights, and references can rebuild the untrained
    speaker). ``message_probe`` is the probe's half that reads the received message (level decide)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kw = {"view_dim": pixels, "message_length": config.message_length, "vocab_size": config.vocab_size}
        speakers = {a: speaker_cls(**kw) for a in AGENTS}
        critics = {a: Critic(hidden=config.critic_hidden, **kw) for a in AGENTS}
        with torch.no_grad():
            width = speakers[STUDENT].eval()(torch.zeros(2, pixels))[1].shape[-1]
            speakers[STUDENT].train()
        return speakers, critics, LinearProbe(width), LinearProbe(config.message_length * config.vocab_size)


def _build(runs: Sequence[tuple[str, int]], config: LanguageConfig, pixels: int, speaker_cls: type, vectorized: bool):
    per_run = [run_modules(seed, config, pixels, speaker_cls) for _, seed in runs]
    speakers = {a: Population([r[0][a] for r in per_run], vectorized=vectorized) for a in AGENTS}
    critics = {a: Population([r[1][a] for r in per_run]) for a in AGENTS}
    return speakers, critics, Population([r[2] for r in per_run]), Population([r[3] for r in per_run])


def default_speaker(config: LanguageConfig) -> type:
    """The thesis' speaker with the configured hidden widths, as a class with the plug-in signature."""
    hidden, layer_norm = config.hidden, config.speaker_layer_norm

    class ThesisSpeaker(Speaker):
        def __init__(self, view_dim: int, message_length: int, vocab_size: int):
            super().__init__(view_dim, message_length, vocab_size, hidden, layer_norm)

    return ThesisSpeaker


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation without fixed points (one cycle through a shuffled order), so that a
    product-of-marginals pair never pairs an image with its own message."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


def mi_loss(critic, view: torch.Tensor, message: torch.Tensor, other_view: torch.Tensor) -> torch.Tensor:
    """Vanilla-GAN discriminator loss of joint ``(view, message)`` vs product-of-marginals
    ``(other_view, message)`` pairs, per message ``[..., B]``. Critic *and* speaker minimise it: the
    critic to tell the pairs apart, the speaker to make its messages easy to tell (max-max). Both pairs go
    through the critic in one call: one weight gradient instead of two summed (at 20 runs, 1.2x faster)."""
    joint, marginal = critic(torch.cat([view, other_view], -2), torch.cat([message, message], -3)).chunk(2, -1)
    return F.binary_cross_entropy_with_logits(
        joint, torch.ones_like(joint), reduction="none"
    ) + F.binary_cross_entropy_with_logits(marginal, torch.zeros_like(marginal), reduction="none")


def _call(population: Population, rows: torch.Tensor | None, *args: torch.Tensor):
    """A population on inputs with a leading run dimension: every member, or only ``rows``."""
    return population(*args) if rows is None else population.rows(rows, *args)


class LanguageTrainer(Trainer):
    """Trains ``runs`` = [(level, seed), ...] together; ``fit`` returns one ``RunResult`` per run."""

    def __init__(
        self,
        config: LanguageConfig,
        splits: Splits,
        runs: Sequence[tuple[str, int]],
        speaker_cls: type | None = None,
        device: torch.device | str = "cpu",
    ):
        unknown = sorted({level for level, _ in runs} - LEVELS.keys())
        if unknown:
            raise ValueError(f"unknown level(s) {', '.join(unknown)}; choose from {', '.join(LEVELS)}")
        if not runs:
            raise ValueError("no runs to train")
        super().__init__((config, splits, runs, speaker_cls), runs, device, config.eval_every, config.log_every)
        self.config, self.splits = config, splits.to(device)
        pixels = splits.train.images.shape[1]
        self.view = config.partial_view()
        self.masks = torch.stack([self.view.masks(pixels, seed) for _, seed in runs]).to(device)
        vectorized = True  # a foreign class fails here, not deep inside vmap, and may need the per-run loop
        if speaker_cls is not None:
            vectorized = check_speaker(speaker_cls, config.message_length, config.vocab_size, pixels)
        self.speakers, self.critics, self.probe, self.message_probe = _build(
            runs, config, pixels, speaker_cls or default_speaker(config), vectorized
        )
        for population in self._populations().values():
            population.to(device)
        self.optimizer = adam(
            [p for pop in (*self.speakers.values(), *self.critics.values()) for p in pop.parameters()], device,
            lr=config.lr,
        )
        self.probe_optimizer = adam(self.probe.parameters() + self.message_probe.parameters(), device,
                                    lr=config.probe_lr)
        self.generators = [generator(seed, device) for _, seed in runs]
        self.reinforce = {a: Reinforce(config.entropy_weight, config.baseline_decay) for a in AGENTS}
        levels = [LEVELS[level] for level, _ in runs]
        two_way = [lv.teacher_receives for lv in levels]
        weight = [config.ce_weight_two_way if tw else config.ce_weight for tw in two_way]
        self.ce_weight = {
            STUDENT: self._column([w * lv.student_receives for w, lv in zip(weight, levels, strict=True)]),
            TEACHER: self._column([w * lv.teacher_receives for w, lv in zip(weight, levels, strict=True)]),
        }
        self.feedback = self._column([lv.feedback for lv in levels]).view(-1, 1, 1, 1)
        self.decides = self._column([lv.decides for lv in levels]).view(-1, 1, 1)
        self.history: dict[str, list] = {"steps": [], "val": [], "test": []}
        self.best: list[dict[str, torch.Tensor]] = [{} for _ in runs]

    def _column(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    # ---------------------------------------------------------------------------------- training
    def _draw(self, shape: tuple[int, ...], fn: Callable) -> torch.Tensor:
        return torch.stack([fn(shape, g) for g in self.generators])

    def losses(self) -> dict[str, torch.Tensor]:
        """Draw the next batch and compute every run's loss terms (``[runs]`` each, graphs attached):
        ``mi_<agent>``, ``communication_<agent>`` (weighted and routed as the level says),
        ``ce_<agent>`` (unweighted, for logging), ``probe`` and ``temperature``; with REINFORCE also
        ``reinforce_<agent>`` (the speaker's surrogate loss) and ``entropy_<agent>``."""
        cfg, train, dev = self.config, self.splits.train, self.device
        B, L, V = cfg.batch_size, cfg.message_length, cfg.vocab_size
        idx = self._draw((B,), lambda s, g: torch.randint(len(train.images), s, generator=g, device=dev))
        perm = self._draw((B,), lambda s, g: _derangement(s[0], g))
        uniform = self._draw((len(AGENTS), B, L, V), lambda s, g: torch.rand(s, generator=g, device=dev))
        images = train.images[idx]
        noise = None
        if self.view.resamples:
            noise = self._draw((len(AGENTS), *images.shape[1:]), lambda s, g: torch.rand(s, generator=g, device=dev))
        seen = views(images, self.masks, self.view, noise)
        temperature = cfg.temperature(self.step)

        out: dict[str, torch.Tensor] = {"temperature": torch.full((len(self.runs),), temperature, device=dev)}
        reinforce = cfg.estimator == "reinforce"
        logits, messages, mi = {}, {}, {}
        for i, a in enumerate(AGENTS):
            logits[a], features = self.speakers[a](seen[a])
            if reinforce:
                messages[a] = sampled_message(logits[a], uniform[:, i])
            else:
                messages[a] = gumbel_softmax(logits[a], temperature, uniform[:, i], hard=cfg.straight_through)
            other_view = torch.gather(seen[a], 1, perm.unsqueeze(-1).expand_as(seen[a]))
            mi[a] = mi_loss(self.critics[a], seen[a], messages[a], other_view)
            out[f"mi_{a}"] = mi[a].mean(-1)
            if a == STUDENT:
                scores = self._probe(features, messages[TEACHER])
                out["probe"] = (
                    F.cross_entropy(scores.flatten(0, 1), train.labels[idx].flatten(), reduction="none")
                    .view(len(self.runs), B)
                    .mean(-1)
                )
        ce = {}
        for a, received in exchange(messages).items():
            target = self.feedback * received + (1 - self.feedback) * received.detach()
            ce[a] = communication_loss(target, logits[a])
            out[f"ce_{a}"] = ce[a].mean(-1)
            out[f"communication_{a}"] = self.ce_weight[a] * out[f"ce_{a}"]
        if reinforce:
            for a, other in zip(AGENTS, reversed(AGENTS), strict=True):
                log_p = torch.log_softmax(logits[a], -1)
                feedback = self.feedback.view(-1, 1) * self.ce_weight[other].view(-1, 1) * ce[other]
                reward = -(mi[a] + feedback).detach()
                entropy = -(log_p.exp() * log_p).sum((-1, -2))
                out[f"entropy_{a}"] = entropy.detach().mean(-1)
                out[f"reinforce_{a}"] = self.reinforce[a].loss((messages[a] * log_p).sum((-1, -2)), reward, entropy)
        return out

    def _probe(self, features: torch.Tensor, received: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The student's class scores: its probe on its own features and, at level decide, on the hard
        message it received (inputs detached: the probe's loss never reaches a speaker); of the runs
        ``rows`` only, when given."""
        message = hard_message(received.detach()).flatten(-2)
        decides = self.decides if rows is None else self.decides[rows]
        return _call(self.probe, rows, features.detach()) + decides * _call(self.message_probe, rows, message)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of every run; returns per-run training metrics ``[runs]``."""
        terms = self.losses()
        loss = sum(
            terms[f"mi_{a}"] + terms[f"communication_{a}"] + terms.get(f"reinforce_{a}", 0) for a in AGENTS
        ).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.probe_optimizer.zero_grad(set_to_none=True)
        terms["probe"].sum().backward()
        self.probe_optimizer.step()
        self.step += 1
        names = {"mi": "mi_loss", "ce": "communication_ce"}
        if self.config.estimator == "reinforce":
            names["entropy"] = "message_entropy"
        metrics = {f"train/{names[k]}_{a}": terms[f"{k}_{a}"].detach() for k in names for a in AGENTS}
        return {**metrics, "train/probe_loss": terms["probe"].detach(), "train/temperature": terms["temperature"]}

    def total_steps(self) -> int:
        return self.config.steps

    # -------------------------------------------------------------------------------- evaluation
    def eval_views(self, images: torch.Tensor, tag: str, start: int) -> dict[str, torch.Tensor]:
        """Every run's views of evaluation images ``[n, pixels]`` (``tag`` names the split and ``start``
        the images' offset in it: a resample view's noise is fixed per seed, split and chunk)."""
        noise = None
        if self.view.resamples:
            shape = (len(AGENTS), *images.shape)
            per_seed = {k: fixed_uniform(k, tag, start, shape, self.device) for k in {k for _, k in self.runs}}
            noise = torch.stack([per_seed[k] for _, k in self.runs])
        return views(images.unsqueeze(0), self.masks, self.view, noise)

    @torch.no_grad()
    def evaluate(
        self, split: Split, agreement: bool = True, chunk: int = 1000, tag: str = "val", rows: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-run probe accuracy (%) of the student and, with ``agreement``, the fraction of tokens on
        which the teacher's and the student's *hard* (evaluation) messages agree; of the runs ``rows``
        only, when given."""
        picked = None if rows is None else torch.tensor(rows, device=self.device)
        size = len(self.runs) if rows is None else len(rows)
        correct = torch.zeros(size, device=self.device)
        agree = torch.zeros(size, device=self.device)
        for population in self._populations().values():
            population.eval()
        for start in range(0, len(split.images), chunk):
            seen = self.eval_views(split.images[start : start + chunk], tag, start)
            if picked is not None:
                seen = {a: v[picked] for a, v in seen.items()}
            s_logits, s_features = _call(self.speakers[STUDENT], picked, seen[STUDENT])
            t_logits = _call(self.speakers[TEACHER], picked, seen[TEACHER])[0]
            predictions = self._probe(s_features, t_logits, picked).argmax(-1)
            correct += (predictions == split.labels[start : start + chunk]).float().sum(-1)
            if agreement:
                agree += (hard_message(t_logits) * hard_message(s_logits)).sum(-1).mean(-1).sum(-1)
        for population in self._populations().values():
            population.train()
        n = len(split.images)
        out = {"accuracy": 100.0 * correct / n}
        if agreement:
            out["message_agreement"] = agree / n
        return out

    def evaluation(self) -> dict[str, torch.Tensor]:
        """Validation accuracy of every run, and test accuracy of the runs that reached a new best
        validation (the first step that reached it), whose weights are kept: a run's reported test
        accuracy is the one at its best validation, so the other runs' test passes would be thrown away
        (they were two thirds of Table 4.1's test passes)."""
        val = self.evaluate(self.splits.val)
        accuracies = val["accuracy"].tolist()
        improved = [r for r, accuracy in enumerate(accuracies)
                    if not self.history["val"] or accuracy > max(v[r] for v in self.history["val"])]
        test = [math.nan] * len(accuracies)
        if improved:
            tested = self.evaluate(self.splits.test, agreement=False, tag="test", rows=improved)["accuracy"]
            for r, accuracy in zip(improved, tested.tolist(), strict=True):
                test[r] = accuracy
                self.best[r] = {k: p.member(r) for k, p in self._populations().items()}
        self.history["steps"].append(self.step)
        self.history["val"].append(accuracies)
        self.history["test"].append(test)
        return {"val/accuracy": val["accuracy"], "val/message_agreement": val["message_agreement"]}

    def result(self, run: int) -> RunResult:
        val = [v[run] for v in self.history["val"]]
        best = max(range(len(val)), key=lambda i: (val[i], -i)) if val else None
        return RunResult(
            test_accuracy=self.history["test"][best][run] if val else math.nan,
            best_val_accuracy=val[best] if val else math.nan,
            best_step=self.history["steps"][best] if val else 0,
            steps=list(self.history["steps"]),
            val_accuracy=val,
        )

    def best_weights(self, run: int) -> dict[str, torch.Tensor]:
        """Speakers, critics and probe of run ``run`` at its best validation, ``{population.param: tensor}``."""
        return {f"{name}.{k}": v for name, state in self.best[run].items() for k, v in state.items()}

    def parameters_by_name(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, p in self._populations().items() for k, v in p.params.items()}

    # ------------------------------------------------------------------------------- checkpoints
    def _populations(self) -> dict[str, Population]:
        return {
            **{f"speaker_{a}": p for a, p in self.speakers.items()},
            **{f"critic_{a}": p for a, p in self.critics.items()},
            "probe": self.probe,
            "message_probe": self.message_probe,
        }

    def _state(self) -> dict:
        """Everything needed to resume bit-for-bit: weights, optimisers, RNG streams, history."""
        return {
            "history": self.history,
            "best": self.best,
            "generators": [g.get_state() for g in self.generators],
            "populations": {k: p.state_dict() for k, p in self._populations().items()},
            "optimizer": self.optimizer.state_dict(),
            "probe_optimizer": self.probe_optimizer.state_dict(),
            "reinforce": {a: r.state_dict() for a, r in self.reinforce.items()},
        }

    def _load_state(self, state: dict) -> None:
        for k, p in self._populations().items():
            p.load_state_dict(state["populations"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        for a, r in self.reinforce.items():
            r.load_state_dict(state["reinforce"][a])
        restore_generators(self.generators, state["generators"])
        self.history, self.best = state["history"], state["best"]
