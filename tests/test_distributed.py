"""The network on real processes: 2 and 3 gloo processes on loopback (torch.multiprocessing), each test under a
minute. Posts reach other processes' inboxes, routing and losses are those of the simulator, placement changes
no draw, a dead peer is one line (never a hang), a killed group resumes to the same numbers, and the DDP
baseline's hook hands over exactly the parameters' bytes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from envs.data import load_splits
from envs.network import CONTENTS
from envs.routing import Minibatch, Network, pack, placement, unpack
from tests.conftest import KillAt, make_dataset
from trainers.base import Events
from trainers.network import NetworkConfig, NetworkTrainer

CONFIG = NetworkConfig(nodes=5, neighbours=2, content="labels", batch_size=8, steps=20, eval_every=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args) -> list[int | None]:
    """Run ``fn(rank, world, group, *args[1:])`` in ``world`` fresh processes joined in one gloo group on loopback
    (``args[0]``: the exchange); each gets a minute, then is killed. Returns their exit codes (None: it hung)."""
    context = mp.spawn(_enter, args=(fn, world, free_port(), args), nprocs=world, join=False)
    for process in context.processes:
        process.join(60)
    codes = [None if p.is_alive() else p.exitcode for p in context.processes]
    for process in context.processes:
        process.kill()
    return codes


def _enter(rank: int, fn, world: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from trainers.distributed import DistributedGroup

    group = DistributedGroup(timeout=20, exchange=args[0])
    settled = False
    try:
        fn(rank, world, group, *args[1:])
        settled = True
    finally:
        group.close(settled)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=600, n_test=60)


def _posts(rank: int, world: int, group, out: Path) -> None:
    pixels = torch.arange(600 * 4).view(600, 4).remainder(251).to(torch.uint8)
    processes = placement(4, world)
    net = Network(pixels, 4, 3, 2, 10, 16, seed=0, owned=processes[rank])
    index = torch.tensor([[7, 8], [9, 10]])[: len(net.owned)] + 10 * rank
    batch = Minibatch(index, torch.zeros_like(index, dtype=torch.bool), torch.zeros(*index.shape, 10), pixels[index])
    labels = torch.nn.functional.one_hot(index % 10, 10).float()
    post = net.post(torch.tensor([True, False])[: len(net.owned)], batch, labels)
    content = CONTENTS["labels"]
    others = [q for q in range(world) if q != rank]
    incoming = group.exchange({q: [pack(net.outbound(post, processes[q]), content.encode)] for q in others}, others, 1)
    net.deliver([post, *(unpack(incoming[p][0], 2, 4, 1, lambda raw: content.decode(raw, 10)) for p in others)])
    torch.save(net.inbox.state_dict(), out / f"inbox{rank}.pt")


@pytest.mark.parametrize("exchange", ["p2p", "all_to_all"])
def test_posts_reach_the_inboxes_of_other_processes_as_in_one_process(tmp_path, exchange):
    assert spawn(_posts, 2, exchange, tmp_path) == [0] * 2
    pixels = torch.arange(600 * 4).view(600, 4).remainder(251).to(torch.uint8)
    whole = Network(pixels, 4, 3, 2, 10, 16, seed=0)  # node 0 (rank 0) and node 2 (rank 1) broadcast
    index = torch.tensor([[7, 8], [0, 0], [17, 18], [0, 0]])
    batch = Minibatch(index, torch.zeros_like(index, dtype=torch.bool), torch.zeros(4, 2, 10), pixels[index])
    labels = torch.nn.functional.one_hot(index % 10, 10).float()
    whole.broadcast(torch.tensor([True, False, True, False]), batch, labels)
    for rank, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
        got = torch.load(tmp_path / f"inbox{rank}.pt")
        for key, value in whole.inbox.state_dict().items():
            assert torch.equal(got[key], value[rows]), (rank, key)
    assert whole.inbox.count.tolist() == [2, 4, 2, 4] and whole.inbox.pixels[1, 2].tolist() == pixels[17].tolist()


class Losses(Events):
    """Every seed's training loss at every step."""

    def __init__(self):
        self.values: list[float] = []

    def scalars(self, step: int, values: dict) -> None:
        self.values.extend(values.get("train/loss", {}).values())


def _train(rank: int, world: int, group, root: Path, out: Path, config: NetworkConfig) -> None:
    torch.set_num_threads(1)
    trainer = NetworkTrainer(config, load_splits("mnist", root, download=False), [0, 1], group=group)
    trainer.log_every, losses = 1, Losses()
    results = trainer.fit(losses)
    sums = trainer.collective_sums(trainer.predict(trainer.splits.test.images))
    if rank == 0:
        torch.save({"results": [dataclasses.asdict(r) for r in results], "losses": losses.values, "sums": sums}, out)


@pytest.mark.parametrize("world", [2, 3])
def test_routing_is_the_simulators_and_losses_agree_on_any_number_of_processes(root, tmp_path, world):
    """What is identical across placements, at the tolerance docs/network.md states: routing, logical bytes, per-node
    losses and accuracies bit for bit on CPU with gloo; the collective decision's sums (reduced across
    processes in another order) within 1e-5; only the wire bytes differ, by design."""
    assert spawn(_train, world, "p2p", root, tmp_path / "spread.pt", CONFIG) == [0] * world
    spread = torch.load(tmp_path / "spread.pt")
    simulator = NetworkTrainer(CONFIG, load_splits("mnist", root, download=False), [0, 1])
    simulator.log_every, losses = 1, Losses()
    alone = [dataclasses.asdict(r) for r in simulator.fit(losses)]
    for got, want in zip(spread["results"], alone, strict=True):
        for key in ("routing", "samples_sent", "dropped", "consumed_from_inbox", "bytes_sent_per_node_step", "steps",
                    "test_nodes", "val_average", "test_average"):
            assert got[key] == want[key], key
        assert got["wire_bytes_per_node_step"] > 0 and want["wire_bytes_per_node_step"] == 0
    assert len(spread["losses"]) == len(losses.values) == 2 * 20
    assert spread["losses"] == losses.values
    sums = simulator.collective_sums(simulator.predict(simulator.splits.test.images))
    torch.testing.assert_close(spread["sums"], sums, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("average", ["gossip", "local-sgd", "allreduce"])
def test_parameter_averaging_across_processes_equals_one_process(root, tmp_path, average):
    """The rivals of codistillation on 3 processes: the nodes' rows meet in one all-reduce (in float64), and
    the accuracies and logical bytes are those of one process; the wire bytes are what the all-reduce took."""
    config = dataclasses.replace(CONFIG, content="none", average=average, average_every=1 if average == "allreduce"
                                 else 3)
    assert spawn(_train, 3, "p2p", root, tmp_path / "spread.pt", config) == [0] * 3
    spread = torch.load(tmp_path / "spread.pt")
    alone = NetworkTrainer(config, load_splits("mnist", root, download=False), [0, 1]).fit()
    for got, want in zip(spread["results"], map(dataclasses.asdict, alone), strict=True):
        assert got["bytes_sent_per_node_step"] == want["bytes_sent_per_node_step"] > 0
        assert got["wire_bytes_per_node_step"] > 0 == want["wire_bytes_per_node_step"]
        torch.testing.assert_close(got["test_nodes"], want["test_nodes"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["val_average"], want["val_average"], atol=1e-5, rtol=0)


def test_a_nodes_draws_and_shard_do_not_depend_on_which_process_holds_it():
    pixels = torch.zeros(300, 2, dtype=torch.uint8)
    whole, part = Network(pixels, 6, 2, 4, 1, 8, seed=3), Network(pixels, 6, 2, 4, 1, 8, seed=3, owned=range(4, 6))
    assert all(torch.equal(a, b) for a, b in zip(whole.order[4:], part.order, strict=True))
    for _ in range(5):
        whole.minibatch(torch.zeros(6, dtype=torch.long))
        part.minibatch(torch.zeros(2, dtype=torch.long))
    assert torch.equal(whole.digest[4:], part.digest)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(whole.generators[4:], part.generators,
                                                                          strict=True))


def _die(rank: int, world: int, group, root: Path, out: Path) -> None:
    from trainers.distributed import PeerLost

    trainer = NetworkTrainer(dataclasses.replace(CONFIG, steps=200), load_splits("mnist", root, download=False), [0],
                             group=group)

    class Die(Events):
        def advance(self, steps: int = 1) -> None:
            if rank == 1 and trainer.step == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    try:
        trainer.fit(Die())
    except PeerLost as e:
        out.write_text(str(e))


def test_a_dead_peer_stops_the_others_with_one_line(root, tmp_path):
    assert spawn(_die, 2, "p2p", root, tmp_path / "line.txt") == [0, -signal.SIGKILL]  # no hang: both ended
    line = (tmp_path / "line.txt").read_text()
    assert line.startswith("rank 0 of 2 lost its peers during ") and "\n" not in line and "re-run to resume" in line


def _kill_and_resume(rank: int, world: int, group, root: Path, out: Path) -> None:
    splits = load_splits("mnist", root, download=False)
    checkpoint = out / f"c{rank}.pt"
    killed = NetworkTrainer(CONFIG, splits, [0], group=group)
    at = KillAt(15)  # after the checkpoint of the evaluation at step 10
    at.trainer = killed
    with pytest.raises(KeyboardInterrupt):
        killed.fit(at, checkpoint)
    resumed = NetworkTrainer(CONFIG, splits, [0], group=group).fit(checkpoint=checkpoint)
    whole = NetworkTrainer(CONFIG, splits, [0], group=group).fit()
    if rank == 0:
        torch.save([dataclasses.asdict(r) for r in (*resumed, *whole)], out / "results.pt")


def test_a_killed_group_resumes_from_its_checkpoints_to_the_same_numbers(root, tmp_path):
    assert spawn(_kill_and_resume, 3, "all_to_all", root, tmp_path) == [0] * 3
    resumed, whole = torch.load(tmp_path / "results.pt")
    assert resumed == whole and [p.name for p in sorted(tmp_path.glob("c*.pt"))] == ["c0.pt", "c1.pt", "c2.pt"]


class SignalAt(Events):
    """Rank 0 gets a real SIGINT (Ctrl-C) once its trainer reached ``step``; the other ranks get none."""

    def __init__(self, trainer, step: int, rank: int):
        self.trainer, self.step, self.rank = trainer, step, rank

    def advance(self, steps: int = 1) -> None:
        if self.rank == 0 and self.trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def _interrupt_and_resume(rank: int, world: int, group, root: Path, out: Path) -> None:
    splits, config = load_splits("mnist", root, download=False), dataclasses.replace(CONFIG, steps=30)
    checkpoint = out / f"c{rank}.pt"
    interrupted = NetworkTrainer(config, splits, [0], group=group)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(SignalAt(interrupted, 12, rank), checkpoint)
    (out / f"step{rank}").write_text(str(torch.load(checkpoint, weights_only=False)["step"]))
    resumed = NetworkTrainer(config, splits, [0], group=group).fit(checkpoint=checkpoint)
    whole = NetworkTrainer(config, splits, [0], group=group).fit()
    if rank == 0:
        torch.save([dataclasses.asdict(r) for r in (*resumed, *whole)], out / "results.pt")


def test_ctrl_c_on_rank_0_checkpoints_every_rank_at_the_next_evaluation_and_resumes_to_the_same_numbers(root,
                                                                                                       tmp_path):
    assert spawn(_interrupt_and_resume, 2, "p2p", root, tmp_path) == [0, 0]
    assert [(tmp_path / f"step{r}").read_text() for r in (0, 1)] == ["20", "20"]  # the evaluation after step 12
    resumed, whole = torch.load(tmp_path / "results.pt")
    assert resumed == whole


def _ddp(rank: int, world: int, group, root: Path, out: Path) -> None:
    from trainers.network.ddp import DDPBaseline

    baseline = DDPBaseline(dataclasses.replace(CONFIG, content="none", steps=6, eval_every=3),
                           load_splits("mnist", root, download=False), [0, 1], group=group)
    results = baseline.fit()
    params = sum(p.numel() * p.element_size() for p in baseline.model.parameters())
    weights = torch.cat([p.detach().flatten() for p in baseline.model.parameters()])
    torch.save({"hook": [r.hook_bytes_per_step for r in results], "params": params, "weights": weights},
               out / f"ddp{rank}.pt")


def test_the_ddp_hook_hands_over_every_parameter_byte_each_step_and_replicas_stay_equal(root, tmp_path):
    assert spawn(_ddp, 2, "p2p", root, tmp_path) == [0] * 2
    first, second = (torch.load(tmp_path / f"ddp{r}.pt") for r in (0, 1))
    assert first["hook"] == [first["params"] / 2] * 2  # two seeds' replicas, float32 gradients of each
    assert torch.equal(first["weights"], second["weights"])


def _ddp_recipe(rank: int, world: int, group, root: Path, out: Path) -> None:
    from trainers.network.ddp import DDPBaseline

    splits = load_splits("mnist", root, download=False)
    config = dataclasses.replace(CONFIG, content="none", steps=4, eval_every=2, model="dcgan-bn", augment=True,
                                 lr_schedule="cosine")
    baseline = DDPBaseline(config, splits, [0], group=group)
    baseline.fit()
    buffers = [b.clone() for b in baseline.model.module.buffers()]
    accuracies = [baseline.accuracy(splits.val) for _ in range(2)]
    plain, augmented = (DDPBaseline(dataclasses.replace(config, augment=a), splits, [0], group=group).train_step()
                        for a in (False, True))
    torch.save({"accuracies": accuracies, "lr": baseline.optimizer.param_groups[0]["lr"], "losses": [plain, augmented],
                "kept": all(torch.equal(a, b) for a, b in zip(buffers, baseline.model.module.buffers(), strict=True))},
               out / "recipe.pt")


def test_ddp_follows_the_recipe_and_evaluates_batch_norm_on_its_running_statistics(root, tmp_path):
    assert spawn(_ddp_recipe, 1, "p2p", root, tmp_path) == [0]
    got = torch.load(tmp_path / "recipe.pt")
    assert got["kept"] and got["accuracies"][0] == got["accuracies"][1]  # evaluation leaves the statistics alone
    assert got["lr"] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 3 / 4)) / 2)  # cosine, set before step 4
    plain, augmented = (loss["train/loss"] for loss in got["losses"])
    assert not torch.equal(plain, augmented)  # the same replica and minibatch, cropped and flipped


def _cli(rank: int, world: int, group, argv: list[str], out: Path) -> None:
    import contextlib
    import io

    from benchmarks import network

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as code:
        from benchmarks.harness import run_cli

        run_cli(network.main, argv)
    (out / f"cli{rank}.txt").write_text(f"{code.value.code}\n{err.getvalue()}")


def test_the_benchmark_on_two_processes_writes_only_on_rank_0_and_refuses_too_few_nodes(root, tmp_path):
    argv = ["--dataset", "mnist", "--data-dir", str(root), "--batch-size", "4", "--steps", "4", "--eval-every", "2",
            "--val-samples", "0", "--seeds", "1", "--distributed", "--out", str(tmp_path / "r.json"),
            "--logdir", str(tmp_path / "runs")]
    assert spawn(_cli, 2, "p2p", argv, tmp_path) == [0, 0]  # the thesis' table has a 1-node configuration
    said = [(tmp_path / f"cli{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert said[0] == ["2", "error: 2 processes cannot share configurations of 1 node(s): every process needs a node; "
                       "run fewer processes or pass --nodes of at least 2"] and said[1] == ["2"]
    assert not (tmp_path / "r.json").exists()
    grid = [*argv, "--nodes", "3", "--content", "labels", "--baseline", "ddp,gossip,local-sgd,allreduce"]
    assert spawn(_cli, 2, "p2p", grid, tmp_path) == [0, 0]
    assert [(tmp_path / f"cli{r}.txt").read_text().splitlines()[0] for r in (0, 1)] == ["0", "0"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data["cells"]) == ["3nodes-labels", "3nodes-gossip-k2-every1", "3nodes-local-sgd-every1",
                                   "3nodes-allreduce", "ddp-3nodes"] and data["config"]["processes"] == 2
    assert data["cells"]["ddp-3nodes"]["runs"]["0"]["hook_bytes_per_step"] > 0
    assert data["cells"]["3nodes-allreduce"]["runs"]["0"]["wire_bytes_per_node_step"] > 0
    assert data["cells"]["3nodes-labels"]["runs"]["0"]["wire_bytes_per_node_step"] > 0
    assert sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == []  # every rank removed its checkpoint
