"""Ahead-of-time compilation for TPU slices on any machine: the train, eval and generation programs of a
config, their per-chip memory and cost, and advice when they do not fit."""
