"""What a chapter 2 run is and what it yields: ``NetworkConfig`` (every field a flag of ``benchmarks.network``)
and ``NetworkResult``; apart from the trainer, so the benchmark's report reads them without it."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.network import MODELS
from envs.base import above, at_least
from envs.network import SUPERVISED_CONTENTS, UNSUPERVISED_CONTENTS
from trainers.base import SCHEDULES, check_fields, option
from trainers.network.objectives import UNSUPERVISED

AVERAGING = ("gossip", "local-sgd", "allreduce")  # parameters averaged with ring neighbours or every node; gradients


@dataclass(frozen=True)
class NetworkConfig:
    nodes: int = option(10, "nodes of the network")
    neighbours: int | None = option(None, "k nearest nodes on the ring each node broadcasts to",
                                    default_text="all others")
    content: str = option("labels", "what travels with an image", choices=SUPERVISED_CONTENTS)
    p_broadcast: float | None = option(None, "probability that a node broadcasts its minibatch",
                                       default_text="p-consume / neighbours: balanced inboxes")
    p_consume: float = option(0.5, "expected fraction of a minibatch taken from the inbox")
    temperature: float = option(1.0, "temperature of received logits")
    comm_weight: float = option(1.0, "scale of the loss on received samples")
    capacity: int | None = option(None, "inbox size in samples", default_text="10 minibatches")
    shard_size: int | None = option(None, "training images per node (the first of each node's exclusive part)",
                                    default_text="the training set split evenly")
    batch_size: int = option(32, "minibatch size of every node")
    lr: float = option(1e-3, "Adam learning rate (Adam's default, as in the thesis)")
    lr_schedule: str = option("constant", "the learning rate over the steps: constant, or decayed to 0 by a cosine "
                              "or a line", choices=SCHEDULES, default_text="cosine for cifar10 classifiers, else "
                              "constant")
    weight_decay: float | None = option(None, "decoupled weight decay (AdamW) of every parameter of the classifiers "
                                        "and VAE nodes, lr x weight_decay per step (BiGAN keeps DCGAN's Adam)",
                                        default_text="none: plain Adam")
    augment: bool = option(False, "classifiers: each training image randomly cropped from its 4-pixel zero "
                           "padding and flipped left-right (CIFAR-10's standard augmentation), from each node's "
                           "own stream", default_text="on for cifar10 classifiers, else off")
    steps: int = option(5000, "training steps per node", default_text="30,000 for cifar10 classifiers, else 5,000")
    eval_every: int = option(250, "steps between evaluations", default_text="250; 500 for cifar10 classifiers; "
                             "1000 with --unsupervised, where each evaluation trains linear probes")
    model: str = option("dcgan-small", "node model", choices=tuple(MODELS),
                        default_text="dcgan-bn for cifar10, else dcgan-small")
    unsupervised: str | None = option(None, "Table 2.3 with VAE or BiGAN nodes", choices=UNSUPERVISED,
                                      default_text="classifiers")
    average: str | None = option(None, "the rivals of codistillation, with --content none, every node started "
                                 "equal: every --average-every steps each node's parameters are averaged with its "
                                 "ring neighbours' (gossip, k = --neighbours) or with every node's (local-sgd, one "
                                 "all-reduce); allreduce: every step the gradients of all nodes (DDP with a replica "
                                 "per node)",
                                 choices=AVERAGING, default_text="none")
    average_every: int = option(1, "steps between parameter averagings (--average)", read_with={"average": None})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.nodes}")
        if not 0 <= self.k < self.nodes:
            raise ValueError(f"--neighbours must be in 0..nodes-1 = {self.nodes - 1}, got {self.neighbours}")
        for name in ("p_broadcast", "p_consume"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} is a probability in [0, 1], got {value}")
        allowed = UNSUPERVISED_CONTENTS if self.unsupervised else SUPERVISED_CONTENTS
        if self.content not in allowed:
            raise ValueError(f"unknown content {self.content!r}; choose from {', '.join(allowed)}")
        at_least(0, weight_decay=self.weight_decay or 0.0)
        if self.unsupervised and not MODELS[self.model].width:
            raise ValueError(f"--model {self.model} is a classifier; --unsupervised nodes need a DCGAN model")
        at_least(1, **{n: getattr(self, n) for n in ("batch_size", "steps", "eval_every")})
        above(0, temperature=self.temperature, lr=self.lr)
        if self.capacity is not None:
            at_least(1, capacity=self.capacity)
        if self.average is not None and (self.content != "none" or self.unsupervised):
            raise ValueError(f"--average {self.average} averages classifiers' parameters instead of sending "
                             f"content: give --content none, not {self.content}, and no --unsupervised")
        at_least(1, average_every=self.average_every)
        if self.average == "allreduce" and self.average_every != 1:
            raise ValueError(f"--average allreduce averages gradients every step; --average-every must be 1, not "
                             f"{self.average_every}")
        if self.shard_size is not None and self.shard_size < self.batch_size:
            raise ValueError(f"--shard-size must hold a minibatch of {self.batch_size}, got {self.shard_size}")

    @property
    def k(self) -> int:
        return self.nodes - 1 if self.neighbours is None else self.neighbours

    @property
    def communicates(self) -> bool:
        return self.content != "none" and self.k > 0

    @property
    def broadcast_probability(self) -> float:
        if not self.communicates:
            return 0.0
        return self.p_consume / self.k if self.p_broadcast is None else self.p_broadcast

    @property
    def wire_content(self) -> str:
        """What travels: a VAE's features are Gaussians (mean, log-variance)."""
        return "gaussian" if self.unsupervised == "vae" and self.content == "features" else self.content

    @property
    def name(self) -> str:
        base = "1node" if self.nodes == 1 else f"{self.nodes}nodes-{self.content}"
        if self.average is not None and self.nodes > 1:
            ring = f"-k{self.k}" if self.average == "gossip" else ""
            every = "" if self.average == "allreduce" else f"-every{self.average_every}"
            base = f"{self.nodes}nodes-{self.average}{ring}{every}"
        return f"{self.unsupervised}-{base}" if self.unsupervised else base


@dataclass
class NetworkResult:
    """One seed: validation curves (node average and collective decision, %), final test accuracies and traffic."""

    steps: list[int] = field(default_factory=list)
    val_average: list[float] = field(default_factory=list)
    val_collective: list[float] = field(default_factory=list)
    test_average: float = 0.0
    test_collective: float = 0.0
    test_nodes: list[float] = field(default_factory=list)
    samples_sent: int = 0  # per receiver, summed over nodes
    bytes_sent_per_node_step: float = 0.0  # logical: what each node sends, wherever its receivers live
    wire_bytes_per_node_step: float = 0.0  # handed to torch.distributed by the processes (0 in one process)
    consumed_from_inbox: float = 0.0  # fraction of all training samples
    dropped: int = 0  # inbox overflow
    routing: str = ""  # a digest of every minibatch every node trained on: equal digests, equal routing
    best_step: int = 0  # unsupervised: the stage whose probes were best on validation
    hook_bytes_per_step: float = 0.0  # DDP baseline: what its communication hook handed to all-reduce per step
