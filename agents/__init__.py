"""The models of the three chapters (the bottom floor: it imports none of ours): speakers, critics and probes
(chapter 4), teachers, students and the learned teacher's policy (chapter 3), DCGAN-style nodes and ``Stacked``,
N models as one batched module (chapter 2), and loading a plug-in class by name."""

__all__ = ["language", "loading", "network", "speakers", "teacher_student"]
