"""Chapter 2's trainers: the network of nodes in one process or many (``trainer``), the unsupervised nodes'
objectives and probes (``objectives``), and the DDP baseline (``ddp``, imported on its own: it needs
torch.distributed)."""

from trainers.network.config import AVERAGING, NetworkConfig, NetworkResult
from trainers.network.trainer import NetworkTrainer

__all__ = ["AVERAGING", "NetworkConfig", "NetworkResult", "NetworkTrainer"]
