"""Evaluation: teacher-forced metrics over a run's checkpoints, the paper's benchmark suites, scoring,
aggregation (avg@n) and the prior probe."""
