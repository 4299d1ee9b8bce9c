"""Each chapter's world as a torch core and a PettingZoo parallel env over it (``language``, ``teacher_student``
with its ``selection``, ``network`` with its ``routing``), what the envs share (``base``), and the datasets
(``data``, ``cifar``, ``cache``)."""

__all__ = ["base", "cache", "cifar", "data", "language", "network", "routing", "selection", "teacher_student"]
