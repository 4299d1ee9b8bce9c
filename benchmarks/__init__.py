"""One command per table: ``language`` (chapter 4), ``teacher`` (chapter 3), ``network`` (chapter 2), with their
report code (``*_report``), ``sb3``, ``throughput`` and ``report`` (tables from a results file); what they share:
flags from configs (``cli``), the results file (``store``), the measurement protocol (``protocol``), and tables,
figures and the event sink (``harness``)."""

__all__ = ["cli", "harness", "language", "network", "network_report", "protocol", "report", "sb3", "store",
           "teacher", "teacher_report", "throughput"]
