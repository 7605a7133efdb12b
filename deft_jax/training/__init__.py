"""Training: the config's one field table, the run's Setup, the pure train step, the loop, checkpointing,
metrics and XLA options."""
