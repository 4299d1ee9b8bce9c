import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from agents.network import MODELS, ModelSpec, node_model, stack
from envs.data import load_splits
from envs.network import CONTENTS, crop_and_flip, supervised_losses
from envs.routing import Minibatch, from_pixels, to_pixels
from tests.conftest import killed_and_resumed, make_dataset
from trainers.network import NetworkConfig, NetworkTrainer

SHAPE = (1, 8, 8)


@pytest.fixture
def big_splits(tmp_path):
    return load_splits("mnist", make_dataset(tmp_path / "data", n_train=600, n_test=60), download=False)


SMALL_BN = ModelSpec(width=8, features=64, batch_norm=True)  # dcgan-bn's layers at dcgan-small's widths


@pytest.mark.parametrize("spec", [MODELS["dcgan-small"], SMALL_BN], ids=["plain", "batch-norm"])
@pytest.mark.parametrize("chunk_bytes", [1, 10 * 2**20])  # every node a chunk of its own; all nodes in one
@pytest.mark.parametrize("kind", ["classifier", "vae", "bigan"])
def test_stacked_parts_equal_each_node_alone(kind, chunk_bytes, spec, monkeypatch):
    monkeypatch.setattr("agents.network.CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    models = [node_model(kind, (3, 32, 32), spec) for _ in range(3)]
    parts = stack(models)
    for name, first in models[0].items():
        grid = isinstance(first[0], torch.nn.Conv2d)
        x = torch.rand(3, 4, 3, 32, 32) if grid else torch.rand(3, 4, first[0].in_features)
        expected = torch.stack([m[name](x[i]) for i, m in enumerate(models)])
        out = parts[name](x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
        grads = torch.autograd.grad(out.square().sum(), list(parts[name].parameters()))
        alone = [torch.autograd.grad(m[name](x[i]).square().sum(), list(m[name].parameters()))
                 for i, m in enumerate(models)]
        alone = [[*a[0::2], *a[1::2]] for a in alone]  # weights, then biases, as Stacked lists them
        scale = max(1.0, *(g.abs().max().item() for g in grads))  # a bias before a batch norm has gradient 0:
        for j, g in enumerate(grads):  # each node's gradient, in the stacked layout (dim 0, node by node)
            own = [a[j] for a in alone]  # float noise there is relative to the part's largest gradient
            expected = torch.stack([a.t() for a in own]).reshape(g.shape) if g.dim() == 3 else torch.cat(own)
            torch.testing.assert_close(g, expected, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("chunk_bytes", [1, 10 * 2**20])
def test_stacked_batch_norm_keeps_each_nodes_running_statistics_and_uses_them_in_eval_mode(chunk_bytes, monkeypatch):
    monkeypatch.setattr("agents.network.CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    models = [node_model("classifier", (3, 32, 32), SMALL_BN) for _ in range(3)]
    parts = stack(models)
    for _ in range(3):  # training steps' forwards update the running statistics
        x = torch.rand(3, 4, 3, 32, 32)
        parts["trunk"](x)
        for i, m in enumerate(models):
            m["trunk"](x[i])
    norms = [j for j, layer in enumerate(models[0]["trunk"]) if isinstance(layer, torch.nn.BatchNorm2d)]
    assert len(norms) == 2  # after the second and third convolutions, not the first
    for j in norms:
        for stat in ("running_mean", "running_var"):
            expected = torch.cat([getattr(m["trunk"][j], stat) for m in models])
            torch.testing.assert_close(getattr(parts["trunk"], f"{stat}{j}"), expected, atol=1e-6, rtol=1e-5)
    parts.eval()
    for m in models:
        m.eval()
    x = torch.rand(3, 2, 3, 32, 32)
    expected = torch.stack([m["head"](m["trunk"](x[i])) for i, m in enumerate(models)])
    torch.testing.assert_close(parts["head"](parts["trunk"](x)), expected, atol=1e-5, rtol=1e-4)
    assert "trunk.running_mean3" in parts.state_dict()  # checkpoints and best weights carry them


def test_chunks_of_nodes_change_the_speed_not_the_numbers(monkeypatch):
    """Convolutions in cache-sized chunks of nodes give bit-identical results (oneDNN's transposed
    convolutions round differently with the group count: equal to float precision)."""
    torch.manual_seed(0)
    parts = stack([node_model("vae", (3, 32, 32), MODELS["dcgan-small"]) for _ in range(4)])
    x = torch.rand(4, 5, 3, 32, 32)
    code = parts["encoder"](x)
    image = parts["decoder"](code[..., :64])
    monkeypatch.setattr("agents.network.CHUNK_BYTES", 1)
    assert torch.equal(parts["encoder"](x), code)
    torch.testing.assert_close(parts["decoder"](code[..., :64]), image, atol=1e-6, rtol=0)


def test_stacked_mlp_nodes_equal_each_node_alone_and_refuse_other_kinds():
    torch.manual_seed(0)
    models = [node_model("classifier", (1, 28, 28), MODELS["mlp"]) for _ in range(3)]
    parts, x = stack(models), torch.rand(3, 4, 1, 28, 28)
    expected = torch.stack([m["head"](m["trunk"](x[i])) for i, m in enumerate(models)])
    torch.testing.assert_close(parts["head"](parts["trunk"](x)), expected, atol=1e-5, rtol=1e-4)
    assert expected.shape == (3, 4, 10) and parts["trunk"].weights[0].shape == (3, 784, 256)
    with pytest.raises(ValueError, match="the MLP node model is a classifier"):
        node_model("vae", (1, 28, 28), MODELS["mlp"])


@pytest.mark.parametrize("content", ["logits", "labels", "features"])
def test_batched_training_equals_a_per_node_loop_with_one_adam_each(content):
    torch.manual_seed(0)
    nodes, b = 3, 6
    models = [node_model("classifier", SHAPE, MODELS["dcgan-small"]) for _ in range(nodes)]
    loop_models = copy.deepcopy(models)
    parts = stack(models)
    batched_opt = torch.optim.Adam(parts.parameters())
    loop_opts = [torch.optim.Adam(m.parameters()) for m in loop_models]
    pixels, labels = to_pixels(torch.rand(40, 64)), torch.arange(40) % 10
    images = from_pixels(pixels)
    dim = 64 if content == "features" else 10
    for _ in range(3):
        index = torch.randint(0, 40, (nodes, b))
        batch = Minibatch(index, torch.rand(nodes, b) < 0.5, torch.randn(nodes, b, dim), pixels[index])
        losses, *_ = supervised_losses(parts, labels, batch, CONTENTS[content], SHAPE, temperature=2.0,
                                       comm_weight=0.7)
        batched_opt.zero_grad()
        losses.mean(1).sum().backward()
        batched_opt.step()
        for i, (m, opt) in enumerate(zip(loop_models, loop_opts, strict=True)):
            x = images[batch.index[i]].view(b, *SHAPE)
            features = m["trunk"](x)
            logits = m["head"](features)
            local = F.cross_entropy(logits, labels[batch.index[i]], reduction="none")
            own = features if content == "features" else logits
            received = 0.7 * CONTENTS[content].loss(own, batch.payload[i], temperature=2.0)
            loss = torch.where(batch.received[i], received, local).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for name in ("trunk", "head"):
        for j, (w, bias) in enumerate(zip(parts[name].weights, parts[name].biases, strict=True)):
            linears = [layer for layer in loop_models[0][name] if hasattr(layer, "weight")]
            for i, m in enumerate(loop_models):
                layer = [layer for layer in m[name] if hasattr(layer, "weight")][j]
                if isinstance(linears[j], torch.nn.Linear):
                    torch.testing.assert_close(w[i].T, layer.weight, atol=1e-5, rtol=1e-4)
                    torch.testing.assert_close(bias[i, 0], layer.bias, atol=1e-5, rtol=1e-4)
                else:
                    out = layer.weight.shape[0]
                    torch.testing.assert_close(w[i * out : (i + 1) * out], layer.weight, atol=1e-5, rtol=1e-4)


def test_same_seed_same_numbers_and_seeds_do_not_depend_on_their_neighbours(big_splits):
    config = NetworkConfig(nodes=4, content="logits", batch_size=8, steps=12, eval_every=6)
    a = NetworkTrainer(config, big_splits, [0, 1]).fit()
    b = NetworkTrainer(config, big_splits, [0, 1]).fit()
    assert [dataclasses.asdict(r) for r in a] == [dataclasses.asdict(r) for r in b]
    alone = NetworkTrainer(config, big_splits, [1]).fit()[0]
    assert alone.samples_sent == a[1].samples_sent and alone.steps == a[1].steps
    assert alone.val_collective == pytest.approx(a[1].val_collective, abs=1e-6)


def test_crop_and_flip_takes_each_image_from_its_padding_at_its_own_draws():
    x = torch.rand(2, 3, 1, 6, 5)
    out = crop_and_flip(x, [torch.Generator().manual_seed(s) for s in (0, 1)])
    for i, g in enumerate(torch.Generator().manual_seed(s) for s in (0, 1)):  # the same draws, one image at a time
        draws = torch.cat([torch.randint(0, 9, (3, 2), generator=g), torch.randint(0, 2, (3, 1), generator=g)], 1)
        for j, (dy, dx, flip) in enumerate(draws.tolist()):
            expected = F.pad(x[i, j], (4, 4, 4, 4))[:, dy : dy + 6, dx : dx + 5]
            torch.testing.assert_close(out[i, j], expected.flip(-1) if flip else expected, atol=0, rtol=0)
    centre = crop_and_flip(x, [torch.Generator().manual_seed(0)] * 2)
    assert centre.shape == x.shape and not torch.equal(centre, x)  # a draw moved or flipped some image


def test_the_recipe_changes_the_numbers_and_keeps_them_reproducible(big_splits):
    plain = NetworkConfig(nodes=2, content="labels", batch_size=8, steps=8, eval_every=4, model="dcgan-bn")
    recipe = dataclasses.replace(plain, **RECIPE)
    a, b = (NetworkTrainer(recipe, big_splits, [0]).fit()[0] for _ in range(2))
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert dataclasses.asdict(a) != dataclasses.asdict(NetworkTrainer(plain, big_splits, [0]).fit()[0])


def test_trainer_learns_and_counts_traffic(big_splits):
    config = NetworkConfig(nodes=4, content="labels", batch_size=8, steps=80, eval_every=40)
    result = NetworkTrainer(config, big_splits, [0]).fit()[0]
    assert result.steps == [40, 80] and len(result.test_nodes) == 4
    assert result.val_collective[-1] > 30  # 10 classes: chance is 10%
    assert 0.3 < result.consumed_from_inbox < 0.6
    assert result.samples_sent > 0 and result.bytes_sent_per_node_step == pytest.approx(
        result.samples_sent * (64 + 1) / (4 * 80)
    )
    alone = NetworkTrainer(dataclasses.replace(config, content="none"), big_splits, [0]).fit()[0]
    assert alone.samples_sent == 0 and alone.consumed_from_inbox == 0


def test_nodes_train_only_on_their_shard_size(big_splits):
    config = NetworkConfig(nodes=4, content="none", batch_size=8, steps=12, eval_every=12, shard_size=24)
    trainer = NetworkTrainer(config, big_splits, [0])
    assert [len(s) for s in trainer.networks[0].shards] == [24] * 4
    seen = set()
    for _ in range(12):
        seen |= set(trainer.minibatches().index.flatten().tolist())
    assert seen == set(torch.cat(trainer.networks[0].shards).tolist())  # 12 minibatches of 8 from 24 each: all, only
    even = NetworkTrainer(dataclasses.replace(config, shard_size=None), big_splits, [0]).networks[0].shards
    assert all(torch.equal(s, e[:24]) for s, e in zip(trainer.networks[0].shards, even, strict=True))


@pytest.mark.parametrize("kind", ["vae", "bigan"])
def test_unsupervised_nodes_train_and_are_probed(big_splits, kind):
    config = NetworkConfig(nodes=3, content="features", unsupervised=kind, batch_size=8, steps=10, eval_every=5)
    trainer = NetworkTrainer(config, big_splits, [0])
    before = {k: v.detach().clone() for k, v in trainer.parts.state_dict().items()}
    result = trainer.fit()[0]
    assert result.steps == [5, 10] and result.best_step in (5, 10)
    assert 0 <= result.test_average <= 100 and len(result.test_nodes) == 3
    assert result.samples_sent > 0
    after = trainer.parts.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every part learned


RECIPE = {"model": "dcgan-bn", "augment": True, "lr_schedule": "cosine"}  # batch norm, augmentation, a schedule


@pytest.mark.parametrize(("content", "unsupervised", "recipe"), [
    ("labels", None, {}), ("features", "vae", {}), ("features", "bigan", {}), ("labels", None, RECIPE)])
def test_a_killed_network_resumes_bit_for_bit(big_splits, tmp_path, content, unsupervised, recipe):
    config = NetworkConfig(nodes=3, content=content, unsupervised=unsupervised, batch_size=8, steps=12, eval_every=4,
                           **recipe)
    whole = NetworkTrainer(config, big_splits, [0, 1])
    results = whole.fit()
    resumed, again = killed_and_resumed(lambda: NetworkTrainer(config, big_splits, [0, 1]), 7, tmp_path / "c.pt")
    assert [dataclasses.asdict(r) for r in again] == [dataclasses.asdict(r) for r in results]
    for r in (0, 1):
        assert all(torch.equal(v, resumed.best_weights(r)[k]) for k, v in whole.best_weights(r).items())
    first = whole.best_weights(0)["trunk.weights.0" if unsupervised is None else "encoder.weights.0"]
    assert first.shape[0] == 3 * MODELS[config.model].width


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"nodes": 0}, "--nodes must be >= 1"),
        ({"nodes": 4, "neighbours": 4}, "--neighbours must be in 0..nodes-1"),
        ({"p_consume": 1.5}, r"probability in \[0, 1\]"),
        ({"p_broadcast": -0.1}, r"probability in \[0, 1\]"),
        ({"content": "gradients"}, "unknown content"),
        ({"content": "logits", "unsupervised": "vae"}, "unknown content"),
        ({"shard_size": 16, "batch_size": 32}, "--shard-size must hold a minibatch of 32, got 16"),
        ({"average": "gossip"}, "--average gossip averages classifiers' parameters instead of sending content"),
        ({"average": "local-sgd", "content": "none", "average_every": 0}, "average_every must be >= 1, got 0"),
        ({"average": "allreduce", "content": "none", "average_every": 2}, "--average-every must be 1, not 2"),
    ],
)
def test_bad_configs_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**kw)


def test_gossip_averages_each_node_with_its_ring_neighbours_on_a_hand_case(big_splits):
    config = NetworkConfig(nodes=4, neighbours=2, content="none", average="gossip", batch_size=8, steps=4,
                           eval_every=2, model="mlp")
    trainer = NetworkTrainer(config, big_splits, [0, 1])
    tensors = trainer._averaged()
    with torch.no_grad():
        for t in tensors:  # node i of seed s holds the value 10 s + i everywhere
            value = (10 * torch.arange(2.0)[:, None] + torch.arange(4.0)).reshape(8, 1)  # seed by seed, node by node
            t.copy_(value.expand(8, t.numel() // 8).reshape(t.shape))
    trainer._mix(tensors, "ring")
    expected = [[(0 + 1 + 3) / 3, (1 + 0 + 2) / 3, (2 + 3 + 1) / 3, (3 + 0 + 2) / 3]]  # itself, i+1, i-1
    expected.append([10 + v for v in expected[0]])
    for t in tensors:
        torch.testing.assert_close(t.view(2, 4, -1).mean(-1), torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("average", ["gossip", "local-sgd", "allreduce"])
def test_every_rival_starts_its_nodes_equal_and_each_seed_differently(big_splits, average):
    config = NetworkConfig(nodes=3, neighbours=2, content="none", average=average, batch_size=8, steps=4,
                           model="mlp")
    for t in NetworkTrainer(config, big_splits, [0, 1])._averaged():
        rows = t.view(2, 3, -1)  # seed by seed, node by node
        torch.testing.assert_close(rows, rows[:, :1].expand_as(rows), atol=0, rtol=0)
        assert not torch.equal(rows[0], rows[1])  # seeds stay independent


def test_local_sgd_makes_every_node_equal_and_counts_the_bytes_it_hands_over(big_splits):
    config = NetworkConfig(nodes=3, content="none", average="local-sgd", average_every=2, batch_size=8, steps=6,
                           eval_every=3, model="mlp")
    trainer = NetworkTrainer(config, big_splits, [0])
    result = trainer.fit()[0]
    for t in trainer._averaged():  # the last step (6) averaged: every node holds the mean
        rows = t.view(3, -1)
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=0, rtol=0)
    params = sum(p.numel() for p in trainer._averaged()) // 3  # one node's, float32
    assert result.bytes_sent_per_node_step == pytest.approx(4 * params * 3 / 6)  # averaged at steps 2, 4, 6
    assert result.test_average == pytest.approx(result.test_nodes[0]) and config.name == "3nodes-local-sgd-every2"
    replicas = dataclasses.replace(config, average="allreduce", average_every=1)
    trainer = NetworkTrainer(replicas, big_splits, [0])
    result = trainer.fit()[0]
    for t in trainer._averaged():  # started as node 0, the same averaged gradient every step: equal throughout, to
        rows = t.view(3, -1)  # the rounding of the fused Adam kernel (its vector lanes round by memory position)
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=1e-7, rtol=1e-6)
    assert result.bytes_sent_per_node_step == pytest.approx(4 * params) and replicas.name == "3nodes-allreduce"
    gossip = dataclasses.replace(config, average="gossip", neighbours=2)
    assert NetworkTrainer(gossip, big_splits, [0]).fit()[0].bytes_sent_per_node_step == pytest.approx(
        4 * params * 2 * 3 / 6)


def test_weight_decay_is_adamw_on_every_node_and_none_keeps_plain_adam(big_splits):
    config = NetworkConfig(nodes=2, content="none", batch_size=8, steps=2, eval_every=2, model="mlp")
    plain = NetworkTrainer(config, big_splits, [0])
    decayed = NetworkTrainer(dataclasses.replace(config, weight_decay=0.5), big_splits, [0])
    assert type(plain.optimizers["nodes"]) is torch.optim.Adam
    assert type(decayed.optimizers["nodes"]) is torch.optim.AdamW
    before = [p.detach().clone() for p in decayed.parts.parameters()]
    for trainer in (plain, decayed):
        trainer.train_step()
    for p0, p1, q in zip(before, decayed.parts.parameters(), plain.parts.parameters(), strict=True):
        step = q.detach() - p0  # Adam's step alone: the same gradients, the same moments
        torch.testing.assert_close(p1.detach(), p0 * (1 - 1e-3 * 0.5) + step, atol=1e-6, rtol=0)
