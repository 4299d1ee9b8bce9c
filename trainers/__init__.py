"""The trainers. The protocol every trainer follows and what they share: ``base`` (the ``fit`` loop, events,
checkpoints), ``files`` (atomic writes), ``group`` and ``distributed`` (processes), ``population`` (N models as
one batched model), ``gumbel``, ``reinforce`` and ``probe`` (estimators and linear probes), ``sb3`` (Stable-
Baselines3 on our envs). Each chapter's trainers in a package of its own: ``language``, ``teacher_student``,
``network``."""

__all__ = ["base", "distributed", "files", "group", "gumbel", "language", "network", "population", "probe",
           "reinforce", "sb3", "teacher_student"]
