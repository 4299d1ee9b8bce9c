import math

import numpy as np
import pytest
import torch

from envs import network as nw
from envs import routing
from tests.conftest import check_pettingzoo


def test_shards_are_exclusive_and_cover_the_data():
    parts = routing.shards(103, 10, torch.Generator().manual_seed(0))
    together = torch.cat(parts)
    assert len(parts) == 10 and sorted(together.tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}


def test_a_shard_size_takes_the_first_images_of_each_even_shard():
    even = routing.shards(103, 10, torch.Generator().manual_seed(0))
    small = routing.shards(103, 10, torch.Generator().manual_seed(0), size=4)
    assert [p.tolist() for p in small] == [p[:4].tolist() for p in even]  # nested: a sweep changes only the size
    assert routing.shards(103, 10, torch.Generator().manual_seed(0), size=10)[9].tolist() == even[9][:10].tolist()
    with pytest.raises(ValueError, match=r"^10 nodes of 11 images each need 110 training images, there are 103"):
        routing.shards(103, 10, torch.Generator().manual_seed(0), size=11)  # the smallest even shard holds 10


def test_ring_neighbours_are_the_nearest_and_full_at_n_minus_one():
    assert routing.ring_neighbours(6, 3)[0].tolist() == [1, 5, 2]
    assert routing.ring_neighbours(6, 2)[4].tolist() == [5, 3]
    full = routing.ring_neighbours(5, 4)
    for i, row in enumerate(full.tolist()):
        assert sorted(row) == [j for j in range(5) if j != i]
    with pytest.raises(ValueError, match="neighbours < nodes"):
        routing.ring_neighbours(4, 4)


def make_network(nodes=6, k=2, capacity=64, dim=1, n=600, batch=4, seed=0):
    pixels = torch.arange(n * 3).view(n, 3).to(torch.uint8)
    return routing.Network(pixels, nodes, k, batch, dim, capacity, seed)


def test_a_node_only_receives_from_nodes_that_list_it():
    net = make_network(capacity=512)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        senders = torch.rand(6, generator=g) < 0.5
        batch = net.minibatch(torch.zeros(6, dtype=torch.long))
        sender_id = torch.arange(6).view(6, 1, 1).expand(-1, 4, 1).float()  # payload says who sent it
        before = net.inbox.count.clone()
        net.broadcast(senders, batch, sender_id)
        expected = torch.zeros(6, dtype=torch.long)
        for s in senders.nonzero().flatten().tolist():
            expected[net.neighbours[s]] += 4
        assert torch.equal(net.inbox.count - before, expected)
    for r in range(6):
        origins = net.inbox.payload[r, : net.inbox.count[r], 0].long().unique().tolist()  # capacity not reached
        assert all(r in net.neighbours[s].tolist() for s in origins)
    # every sample a node sends is from its own minibatch, which came from its own shard
    batch = net.minibatch(torch.zeros(6, dtype=torch.long))
    for i in range(6):
        assert set(batch.index[i].tolist()) <= set(net.shards[i].tolist())


def test_inbox_is_fifo_and_drops_the_oldest_on_overflow():
    inbox = routing.Inbox(nodes=2, capacity=4, payload_dim=1, pixel_dim=2)

    def push(receivers, index):  # each item's pixels and payload say which sample it is
        index = torch.tensor(index)
        inbox.push(torch.tensor(receivers), index, index.float().unsqueeze(1), index.to(torch.uint8).repeat(2, 1).T)

    push([0, 0, 0, 1], [10, 11, 12, 20])
    push([0, 0, 0], [13, 14, 15])
    index, payload, pixels, taken = inbox.pop(torch.tensor([4, 4]), width=4)
    assert taken.tolist() == [4, 1] and inbox.dropped.tolist() == [2, 0]
    assert index[0].tolist() == [12, 13, 14, 15] and index[1, 0] == 20
    assert payload[0, :, 0].tolist() == [12, 13, 14, 15] and pixels[0].tolist() == [[12, 12], [13, 13], [14, 14],
                                                                                    [15, 15]]
    push([0] * 9, list(range(9)))  # more than it holds
    assert inbox.pop(torch.tensor([4, 0]), 4)[0][0].tolist() == [5, 6, 7, 8]


def test_consumption_rate_matches_p_consume():
    p_consume, nodes, k, b = 0.5, 10, 9, 8
    net = make_network(nodes=nodes, k=k, capacity=10 * b, n=5000, batch=b)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        consume = torch.binomial(torch.full((nodes,), float(b)), torch.full((nodes,), p_consume), generator=g).long()
        batch = net.minibatch(consume)
        net.broadcast(torch.rand(nodes, generator=g) < p_consume / k, batch, torch.zeros(nodes, b, 1))
    rate = net.consumed_received.sum().item() / (net.consumed_received + net.consumed_local).sum().item()
    assert rate == pytest.approx(p_consume, abs=0.05)


def test_collective_decision_on_a_hand_example():
    confident, unsure, uniform = [0.9, 0.1], [0.4, 0.6], [0.5, 0.5]
    probs = torch.tensor([[confident], [unsure], [uniform]])
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    w = [math.log(2) - h(confident), math.log(2) - h(unsure), 0.0]
    expected = [(w[0] * 0.9 + w[1] * 0.4) / (w[0] + w[1]), (w[0] * 0.1 + w[1] * 0.6) / (w[0] + w[1])]
    got = nw.collective_decision(probs)[0]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert got.argmax() == 0  # the confident node outvotes the unsure one, though a plain mean is [0.6, 0.4] too
    assert nw.collective_decision(torch.tensor([[uniform], [uniform]]))[0].tolist() == pytest.approx(uniform)


def test_content_losses():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    soft = nw.CONTENTS["logits"].loss(logits, logits, temperature=1.0)
    assert soft.item() == pytest.approx(-(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum().item())
    hot = nw.CONTENTS["labels"].loss(logits, torch.tensor([[0.0, 1.0, 0.0]]))
    assert hot.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([1])).item())
    gaussian = torch.tensor([[0.3, -1.0, 0.2, 0.5]])  # two means, two log-variances
    assert nw.CONTENTS["gaussian"].loss(gaussian, gaussian).item() == pytest.approx(0.0, abs=1e-6)
    # KL(N(0,1) || N(1,1)) = 0.5 per dimension
    assert nw.CONTENTS["gaussian"].loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])).item() == 0.5
    assert nw.CONTENTS["features"].loss(torch.ones(1, 4), torch.zeros(1, 4)).item() == 1.0
    with pytest.raises(ValueError, match="carries no training signal"):
        nw.CONTENTS["none"].loss(logits, logits)


def test_each_content_owns_its_size_bytes_and_message():
    logits, features, labels = torch.randn(2, 3, 10), torch.randn(2, 3, 64), torch.tensor([[1, 2, 3], [4, 5, 6]])
    for name, floats, wire in (("none", 0, 784), ("logits", 10, 784 + 40), ("labels", 10, 785),
                               ("features", 64, 784 + 256), ("gaussian", 128, 784 + 512)):
        content = nw.CONTENTS[name]
        assert content.size(10, 64) == floats and content.wire_bytes(784, 10, 64) == wire
        if name != "gaussian":
            assert content.send(logits, features, labels).shape == (2, 3, floats)
    assert torch.equal(nw.CONTENTS["labels"].send(logits, features, labels).argmax(-1), labels)


def make_env(**kw):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(96, 64, generator=g), torch.arange(96) % 10
    defaults = {"nodes": 3, "batch_size": 4, "max_steps": 5, "reward_samples": 16}
    return nw.parallel_env(images, labels, images[:16], labels[:16], shape=(1, 8, 8), **{**defaults, **kw})


@pytest.mark.parametrize("content", ["labels", "logits", "features", "none"])
def test_pettingzoo_api_aec_and_seeding(content):
    check_pettingzoo(lambda: make_env(content=content))


def test_env_routes_what_agents_choose():
    env = make_env(nodes=3, neighbours=1)
    env.reset(seed=0)
    _, rewards, *_ = env.step({"node_0": np.array([1, 0]), "node_1": np.array([0, 0]), "node_2": np.array([0, 0])})
    assert env.network.inbox.count.tolist() == [0, 4, 0]  # node 0's one neighbour is node 1
    obs, *_ = env.step({"node_0": np.array([0, 0]), "node_1": np.array([0, 3]), "node_2": np.array([0, 0])})
    assert env.network.consumed_received.tolist() == [0, 3, 0]
    assert obs["node_1"][0] == pytest.approx(1 / 40)  # one sample left of 40 slots
    assert obs["node_1"][4] == pytest.approx(2 / 5)  # two of five steps done
    assert all(isinstance(r, float) for r in rewards.values())


def test_bad_env_input_is_named():
    with pytest.raises(ValueError, match="unknown content"):
        make_env(content="gradients")
    with pytest.raises(ValueError, match="neighbours < nodes"):
        make_env(nodes=3, neighbours=3)
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="broadcast 0/1"):
        env.step({a: np.array([2, 0]) for a in env.agents})


def test_the_env_gives_each_node_its_shard_size_and_refuses_one_too_large():
    env = make_env(shard_size=8)
    env.reset(seed=0)
    assert [len(s) for s in env.network.shards] == [8, 8, 8]
    with pytest.raises(ValueError, match=r"^3 nodes of 33 images each need 99 training images, there are 96"):
        make_env(shard_size=33)
