"""Chapter 4's trainers: the language channel's batched Gumbel-Softmax/REINFORCE trainer (``trainer``), the
check of a plug-in speaker (``speaker_check``) and the language analysis of trained messages (``analysis``)."""

from trainers.language.config import LEVELS, THESIS_LEVELS, LanguageConfig, RunResult
from trainers.language.trainer import LanguageTrainer

__all__ = ["LEVELS", "THESIS_LEVELS", "LanguageConfig", "LanguageTrainer", "RunResult"]
