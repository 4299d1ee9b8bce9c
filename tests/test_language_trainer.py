import dataclasses
import math

import pytest
import torch

from agents.language import Critic
from envs.language import AGENTS
from tests.conftest import killed_and_resumed
from trainers.files import CheckpointError, save_atomic
from trainers.gumbel import TemperatureSchedule, gumbel_softmax, hard_message
from trainers.language.config import LEVELS, LanguageConfig
from trainers.language.trainer import LanguageTrainer, mi_loss

TINY = LanguageConfig(
    message_length=4, hidden=(16,), critic_hidden=16, batch_size=8, steps=6, eval_every=3, log_every=2
)
ALL_LEVELS = [(level, 0) for level in LEVELS]  # the thesis four, decide and read


def speaker_grads(trainer: LanguageTrainer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-run gradient norm of each agent's speaker parameters for ``loss``."""
    params = {a: trainer.speakers[a].parameters() for a in AGENTS}
    flat = [p for a in AGENTS for p in params[a]]
    grads = torch.autograd.grad(loss, flat, allow_unused=True, retain_graph=True)
    out, i = {}, 0
    for a in AGENTS:
        gs = grads[i : i + len(params[a])]
        i += len(params[a])
        out[a] = sum(g.flatten(1).abs().sum(1) for g in gs if g is not None)
    return out


def test_communication_gradients_follow_the_level(splits):
    trainer = LanguageTrainer(TINY, splits, ALL_LEVELS)
    terms = trainer.losses()
    communication = sum(terms[f"communication_{a}"] for a in AGENTS).sum()
    grads = speaker_grads(trainer, communication)
    by_level = {level: i for i, (level, _) in enumerate(ALL_LEVELS)}
    # the teacher's speaker hears the student's CE only with feedback (and at both, its own CE too)
    assert grads["teacher"][by_level["none"]] == 0 and grads["teacher"][by_level["receive"]] == 0
    assert grads["teacher"][by_level["feedback"]] > 0 and grads["teacher"][by_level["both"]] > 0
    # the student's speaker learns from the teacher's message at every level but none
    assert grads["student"][by_level["none"]] == 0
    assert all(grads["student"][by_level[lv]] > 0 for lv in ("receive", "feedback", "both"))


def test_feedback_gradient_reaches_the_teacher_only_through_the_students_loss(splits):
    trainer = LanguageTrainer(TINY, splits, [("feedback", 0), ("both", 0)])
    terms = trainer.losses()
    grads = speaker_grads(trainer, terms["communication_student"].sum())
    assert (grads["teacher"] > 0).all()  # feedback: the student's CE trains the teacher's language
    grads = speaker_grads(trainer, terms["communication_teacher"].sum())
    assert grads["teacher"][0] == 0 and grads["student"][0] == 0  # at feedback the teacher receives nothing
    assert grads["teacher"][1] > 0 and grads["student"][1] > 0  # at both it does, and it flows back


def test_communication_weights_match_the_thesis(splits):
    trainer = LanguageTrainer(TINY, splits, ALL_LEVELS)
    # decide: as both; read: as none
    assert trainer.ce_weight["student"].tolist() == pytest.approx([0.0, 0.01, 0.01, 0.005, 0.005, 0.0])
    assert trainer.ce_weight["teacher"].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.005, 0.005, 0.0])


def test_gumbel_messages_are_differentiable_in_training_and_one_hot_at_eval():
    logits = torch.randn(5, 4, 3, requires_grad=True)
    uniform = torch.rand(5, 4, 3, generator=torch.Generator().manual_seed(0))
    soft = gumbel_softmax(logits, 0.5, uniform)
    assert torch.allclose(soft.sum(-1), torch.ones(5, 4))
    assert ((soft > 0) & (soft < 1)).any()
    (soft[..., 0]).sum().backward()
    assert logits.grad.abs().sum() > 0
    hard = hard_message(logits.detach())
    assert set(hard.unique().tolist()) == {0.0, 1.0} and torch.equal(hard.sum(-1), torch.ones(5, 4))
    assert torch.equal(hard.argmax(-1), logits.argmax(-1))


def test_straight_through_is_one_hot_forward_with_a_gradient():
    logits = torch.randn(6, 4, 2, requires_grad=True)
    st = gumbel_softmax(logits, 1.0, torch.rand(6, 4, 2), hard=True)
    assert set(st.detach().unique().tolist()) <= {0.0, 1.0}
    (st * torch.randn(6, 4, 2)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_low_temperature_hardens_samples():
    logits = torch.randn(200, 8, 2)
    uniform = torch.rand(200, 8, 2, generator=torch.Generator().manual_seed(1))
    hot, cold = gumbel_softmax(logits, 5.0, uniform), gumbel_softmax(logits, 0.05, uniform)
    assert cold.max(-1).values.mean() > 0.95 > hot.max(-1).values.mean()


def test_temperature_schedule_anneals_to_its_floor():
    schedule = TemperatureSchedule(start=1.0, factor=0.5, every=10, floor=0.2)
    assert [schedule(s) for s in (0, 9, 10, 25, 1000)] == [1.0, 1.0, 0.5, 0.25, 0.2]
    with pytest.raises(ValueError):
        TemperatureSchedule(factor=1.5)


def test_critic_scores_dependent_pairs_above_independent_ones():
    torch.manual_seed(0)
    critic = Critic(view_dim=6, message_length=3, vocab_size=2, hidden=32)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)

    def batch(n=128):
        view = torch.randn(n, 6)
        message = torch.nn.functional.one_hot((view[:, :3] > 0).long(), 2).float()  # message depends on view
        return view, message, torch.randn(n, 6)

    for _ in range(300):
        view, message, other = batch()
        loss = mi_loss(critic, view, message, other).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    view, message, other = batch(1000)
    with torch.no_grad():
        joint, marginal = critic(view, message), critic(other, message)
    assert joint.mean() > marginal.mean() + 2.0
    assert mi_loss(critic, view, message, other).mean().item() < 2 * torch.log(torch.tensor(2.0)).item() - 0.5


def test_same_seed_same_numbers(splits):
    def train(runs):
        trainer = LanguageTrainer(TINY, splits, runs)
        return [dataclasses.asdict(r) for r in trainer.fit()], trainer.speakers["student"].state_dict()

    (a, weights_a), (b, weights_b) = train([("both", 1), ("none", 2)]), train([("both", 1), ("none", 2)])
    assert a == b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    _, weights_c = train([("both", 3), ("none", 2)])
    assert not torch.equal(weights_a["body.0.weight"][0], weights_c["body.0.weight"][0])
    assert torch.equal(weights_a["body.0.weight"][1], weights_c["body.0.weight"][1])  # runs do not interact


def test_levels_of_one_seed_start_alike(splits):
    trainer = LanguageTrainer(TINY, splits, [("none", 5), ("both", 5), ("none", 6)])
    weights = trainer.speakers["student"].parameters()[0]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert torch.equal(trainer.masks[0], trainer.masks[1]) and not torch.equal(trainer.masks[0], trainer.masks[2])


def test_resume_after_a_kill_matches_an_uninterrupted_run(splits, tmp_path):
    runs = [("feedback", 0), ("none", 1)]
    whole = LanguageTrainer(TINY, splits, runs).fit()
    resumed, results = killed_and_resumed(lambda: LanguageTrainer(TINY, splits, runs), 5, tmp_path / "ckpt.pt")
    assert [dataclasses.asdict(r) for r in results] == [dataclasses.asdict(r) for r in whole]
    again = LanguageTrainer(TINY, splits, runs)
    again.fit()
    assert all(torch.equal(again.best_weights(r)[k], resumed.best_weights(r)[k])
               for r in range(2) for k in again.best_weights(r))


def test_checkpoint_of_other_runs_is_refused(splits, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    save_atomic(checkpoint, LanguageTrainer(TINY, splits, [("none", 0)]).state_dict())
    with pytest.raises(CheckpointError, match="other runs"):
        LanguageTrainer(TINY, splits, [("both", 0)]).fit(checkpoint=checkpoint)
    torch.save({"step": 3, "populations": {}}, checkpoint)  # what the trainer saved before the protocol
    with pytest.raises(CheckpointError, match="from before this version"):
        LanguageTrainer(TINY, splits, [("none", 0)]).fit(checkpoint=checkpoint)
    checkpoint.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as e:
        LanguageTrainer(TINY, splits, [("none", 0)]).fit(checkpoint=checkpoint)
    assert "\n" not in str(e.value) and str(checkpoint) in str(e.value)


def test_unknown_level_is_rejected(splits):
    with pytest.raises(ValueError, match="unknown level"):
        LanguageTrainer(TINY, splits, [("shout", 0)])


def test_marginal_pairs_never_pair_an_image_with_its_own_message():
    from trainers.language.trainer import _derangement

    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 64):
        for _ in range(50):
            perm = _derangement(n, g)
            assert sorted(perm.tolist()) == list(range(n)) and (perm != torch.arange(n)).all()


def test_population_fast_mlp_path_matches_vmap():
    from torch.func import functional_call, vmap

    from agents.teacher_student import student
    from trainers.population import Population

    models = [student(12, (6, 5)) for _ in range(3)]
    population = Population(models)
    assert population._layers == [("linear", "0"), ("relu", "1"), ("linear", "2"), ("relu", "3"), ("linear", "4")]
    x = torch.randn(3, 7, 12)
    reference = vmap(lambda p, b, v: functional_call(population._base, (p, b), (v,)))(
        population.params, population.buffers, x
    )
    assert torch.allclose(population(x), reference, atol=1e-6)
    assert torch.allclose(population.shared(x[0]), torch.stack([m(x[0]) for m in models]), atol=1e-6)
    assert torch.allclose(population.rows(torch.tensor([2, 0]), x[:2]), torch.stack([models[2](x[0]), models[0](x[1])]),
                          atol=1e-6)
    assert Population([torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))])._layers is None


def test_population_dropout_draws_from_each_members_own_generator():
    from agents.teacher_student import mlp
    from trainers.population import Population

    def outputs(seeds, member_seeds):
        models = []
        for s in member_seeds:
            torch.manual_seed(s)
            models.append(mlp(12, (8,), dropout=0.5))
        population = Population(models, [torch.Generator().manual_seed(s) for s in seeds])
        torch.manual_seed(123)  # the global stream must not matter
        return population(torch.ones(len(seeds), 4, 12))

    a, b = outputs([1, 2], [5, 6]), outputs([1, 2], [5, 6])
    assert torch.equal(a, b)
    alone = outputs([2], [6])
    assert torch.equal(a[1], alone[0])  # a member's masks do not depend on who trains beside it
    with pytest.raises(ValueError, match="one generator per model"):
        Population([mlp(12, (8,), dropout=0.5)])


REINFORCE = dataclasses.replace(TINY, estimator="reinforce", entropy_weight=0.0)


def test_reinforce_speakers_learn_only_through_the_score_function(splits):
    trainer = LanguageTrainer(REINFORCE, splits, ALL_LEVELS)
    terms = trainer.losses()
    by_level = {level: i for i, (level, _) in enumerate(ALL_LEVELS)}
    # sampled messages carry no graph: neither MI nor communication losses reach a speaker through them
    through_messages = speaker_grads(trainer, sum(terms[f"mi_{a}"] for a in AGENTS).sum())
    assert all((torch.as_tensor(g) == 0).all() for g in through_messages.values())
    surrogate = speaker_grads(trainer, sum(terms[f"reinforce_{a}"] for a in AGENTS).sum())
    assert all((g > 0).all() for g in surrogate.values())
    # the receiver's own cross-entropy still trains its speaker's token distribution directly
    ce = speaker_grads(trainer, sum(terms[f"communication_{a}"] for a in AGENTS).sum())
    assert ce["student"][by_level["receive"]] > 0 and ce["teacher"][by_level["receive"]] == 0


def test_reinforce_reward_includes_the_receivers_cross_entropy_only_with_feedback(splits, monkeypatch):
    trainer = LanguageTrainer(REINFORCE, splits, ALL_LEVELS)
    seen = {}
    real = trainer.reinforce["teacher"].loss

    def spy(log_prob, reward, entropy=None):
        seen["reward"] = reward
        return real(log_prob, reward, entropy)

    monkeypatch.setattr(trainer.reinforce["teacher"], "loss", spy)
    terms = trainer.losses()
    mi_only = -terms["mi_teacher"].detach()
    by_level = {level: i for i, (level, _) in enumerate(ALL_LEVELS)}
    mean_reward = seen["reward"].mean(-1)
    for level in ("none", "receive"):
        assert mean_reward[by_level[level]] == pytest.approx(mi_only[by_level[level]].item(), abs=1e-5)
    expected = mi_only[by_level["feedback"]] - TINY.ce_weight * terms["ce_student"][by_level["feedback"]]
    assert mean_reward[by_level["feedback"]] == pytest.approx(expected.item(), abs=1e-5)


def test_reinforce_training_is_seeded_and_resumes_with_its_baseline(splits, tmp_path):
    runs = [("both", 0)]
    whole = LanguageTrainer(REINFORCE, splits, runs).fit()
    assert whole == LanguageTrainer(REINFORCE, splits, runs).fit()
    resumed, results = killed_and_resumed(lambda: LanguageTrainer(REINFORCE, splits, runs), 5, tmp_path / "ckpt.pt")
    assert results == whole and resumed.reinforce["student"].updates == REINFORCE.steps


@pytest.mark.parametrize(("level", "twin", "other"), [("decide", "both", "none"), ("read", "none", "both")])
def test_a_level_that_reads_trains_as_its_twin_and_its_probe_also_reads_the_received_message(splits, level, twin,
                                                                                            other):
    """decide trains as both and read (its control) as none; each one's probe also reads the hard message."""
    trainer = LanguageTrainer(TINY, splits, [(twin, 0), (level, 0), (other, 0)])
    initial = trainer.message_probe.state_dict()
    for _ in range(3):
        trainer.train_step()
    for population in (*trainer.speakers.values(), *trainer.critics.values()):  # the probe's loss reaches no agent
        for weights in population.params.values():
            assert torch.equal(weights[0], weights[1])
    first = trainer.speakers["student"].parameters()[0]
    assert not torch.equal(first[1], first[2])  # the other level trains otherwise
    for k, weights in trainer.message_probe.state_dict().items():
        assert torch.equal(weights[0], initial[k][0]) and torch.equal(weights[2], initial[k][2])  # unread
        assert not torch.equal(weights[1], initial[k][1])  # this level's probe learns from the message
    features = torch.zeros(3, 5, 16)
    silence = torch.zeros(3, 5, 4, 2)
    said = torch.nn.functional.one_hot(torch.randint(2, (3, 5, 4)), 2).float()
    scores, changed = trainer._probe(features, silence), trainer._probe(features, said)
    assert torch.equal(scores[0], changed[0]) and torch.equal(scores[2], changed[2])
    assert not torch.equal(scores[1], changed[1])


@pytest.mark.parametrize("level", ["decide", "read"])
def test_the_thesis_levels_train_alike_with_or_without_a_reading_level_beside_them(splits, level):
    alone = LanguageTrainer(TINY, splits, [("both", 0), ("none", 1)])
    beside = LanguageTrainer(TINY, splits, [("both", 0), ("none", 1), (level, 0)])
    a, b = alone.fit(), beside.fit()
    assert [dataclasses.asdict(r) for r in a] == [dataclasses.asdict(r) for r in b[:2]]


def test_evaluating_some_runs_gives_what_evaluating_all_gives_them(splits):
    trainer = LanguageTrainer(TINY, splits, [("none", 0), ("decide", 1), ("both", 2)])
    for _ in range(3):
        trainer.train_step()
    whole = trainer.evaluate(splits.test, agreement=False, tag="test")["accuracy"]
    some = trainer.evaluate(splits.test, agreement=False, tag="test", rows=[2, 1])["accuracy"]
    assert torch.equal(some, whole[[2, 1]])


def test_test_accuracy_is_measured_only_at_a_new_best_validation(splits):
    trainer = LanguageTrainer(TINY, splits, [("none", 0), ("both", 1)])
    results = trainer.fit()
    for r, result in enumerate(results):
        val = trainer.history["val"]
        best = [i for i, v in enumerate(val) if all(v[r] > u[r] for u in val[:i])]
        tested = [i for i, t in enumerate(trainer.history["test"]) if not math.isnan(t[r])]
        assert tested == best and result.test_accuracy == trainer.history["test"][best[-1]][r]
