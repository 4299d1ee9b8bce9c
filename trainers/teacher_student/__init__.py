"""Chapter 3's trainers: the batched students and their selections (``student``), the teachers and
irreducible-loss models trained once and cached (``teachers``), and the learned teachers' policies (``policy``)."""

from trainers.teacher_student.policy import PolicyConfig
from trainers.teacher_student.student import Selection, StudentConfig, StudentResult, StudentTrainer
from trainers.teacher_student.teachers import TeacherConfig, load_or_train_teachers, predict

__all__ = ["PolicyConfig", "Selection", "StudentConfig", "StudentResult", "StudentTrainer", "TeacherConfig",
           "load_or_train_teachers", "predict"]
