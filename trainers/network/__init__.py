"""Chapter 2's trainers: the network of nodes in one process or many (``trainer``), the unsupervised nodes'
objectives and probes (``objectives``), and the DDP baseline (``ddp``, imported on its own: it needs
torch.distributed)."""

from trainers.network.trainer import AVERAGING, NetworkConfig, NetworkResult, NetworkTrainer

__all__ = ["AVERAGING", "NetworkConfig", "NetworkResult", "NetworkTrainer"]
