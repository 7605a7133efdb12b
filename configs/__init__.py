"""Experiment configs: `base.py` plus one file per ablation (get_config(arg), sweep())."""
