"""Configs: every ablation loads, sweeps and validates; every smoke variant trains two steps."""
import math

import jax
import pytest

from deft_jax.training import config as config_lib
from deft_jax import objectives
from tests.helpers.runs import ABLATIONS, CONFIGS, read_metrics, run_in_process, smoke_config

EXPECTED = {"nll", "logp", "prob", "deformed_log", "tsallis", "only_top_p", "only_bottom_p", "only_top_logp",
            "only_bottom_logp", "dft", "eaft", "cayley", "deft"}


def test_one_config_file_per_ablation():
    assert EXPECTED <= set(ABLATIONS)  # (other experiment configs may live beside them)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_defaults_follow_the_paper_and_sweep_applies(name):
    config = config_lib.load_config(f"{CONFIGS / name}.py")
    assert (config.optim.b1, config.optim.b2, config.optim.lr) == (0.9, 0.95, 5e-5)
    assert (config.optim.warmup_ratio, config.optim.clip_norm, config.optim.weight_decay) == (0.1, 1.0, 0.01)
    assert (config.batch_size, config.num_epochs, config.data.max_length) == (256, 1.0, 800)
    assert (config.model.dtype, config.model.param_dtype) == ("bfloat16", "float32")
    spec = config_lib.objective_spec(config)
    assert spec.name == objectives.parse_objective("nll" if name == "logp" else name,
                                                   **{k: v for k, v in spec.params}).name
    grid = config_lib.load_config_module(CONFIGS / f"{name}.py").sweep()
    assert isinstance(grid, list) and grid
    for overrides in grid:
        swept = config_lib.apply_overrides(config, overrides)
        for key, value in overrides.items():
            node = swept
            for part in key.split("."):
                node = node[part]
            assert node == value


def test_deformed_log_arg_and_grid():
    config = config_lib.load_config(f"{CONFIGS}/deformed_log.py:alpha=0.25,runlocal")
    assert config.objective.alpha == 0.25 and config.batch_size == 4
    assert config.model.name == "smollm2-135m-instruct" and config.data.task == "figfont"
    grid = config_lib.load_config_module(CONFIGS / "deformed_log.py").sweep()
    assert [g["objective.alpha"] for g in grid] == [0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 10.0]


def test_model_and_task_are_arguments(shared_data_dir):
    path = shared_data_dir / "gsm8k_test.jsonl"
    config = config_lib.load_config(f"{CONFIGS}/deft.py:model=/x/model.gguf,task=gsm8k,data_path={path}")
    assert (config.model.name, config.data.task, config.data.path) == ("/x/model.gguf", "gsm8k", str(path))
    with pytest.raises(ValueError, match="config.data.path"):
        config_lib.load_config(f"{CONFIGS}/deft.py:task=gsm8k")


@pytest.mark.parametrize("spec, message", [
    ("deft.py:alhpa=0.5", "'alhpa' is not known"),
    ("deformed_log.py:alpha=abc", "alpha='abc': expected a float"),
    ("deformed_log.py:alpha=-1", "parameter 'alpha' must be >= 0"),
    ("tsallis.py:q=2", "parameter 'q' must be <= 1"),
    ("only_top_p.py:tau=1.5", "parameter 'tau' must be <= 1"),
    ("deft.py:runlocal,smoke", "exclude each other"),
    ("deft.py:task=nosuchtask", "config.data.task"),
])
def test_bad_config_arguments_fail_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load_config(f"{CONFIGS}/{spec}")


def test_locked_config_rejects_a_typo_where_it_is_set():
    config = config_lib.load_config(f"{CONFIGS}/deft.py")
    with pytest.raises(AttributeError, match="lrr"):
        config.optim.lrr = 1e-5
    with pytest.raises(ValueError, match="config.optim.lrr"):
        config_lib.apply_overrides(config, {"optim.lrr": 1e-5})


@pytest.mark.parametrize("overrides, message", [
    ({"optim.b2": 1.5}, "config.optim.b2 must be < 1"),
    ({"optim.warmup_ratio": -0.1}, "config.optim.warmup_ratio must be >= 0"),
    ({"loss.impl": "fancy"}, "config.loss.impl must be one of"),
    ({"loss.normalization": "tokens"}, "config.loss.normalization must be one of"),
    ({"loss.accumulation": "sum"}, "config.loss.accumulation must be one of"),
    ({"mesh.tensor": 0}, "config.mesh.tensor must be a positive int or -1"),
    ({"objective.name": "deftt"}, "unknown objective 'deftt'"),
    ({"batch_size": 12}, "config.batch_size=12 is not a multiple of config.micro_batch_size=8"),
    ({"model.overrides": {"d_modle": 32}}, "config.model.overrides.d_modle is not a ModelConfig field"),
])
def test_validation_names_the_field(overrides, message):
    config = smoke_config("deft")
    with pytest.raises(ValueError, match=message):
        config_lib.apply_overrides(config, overrides)


def test_unknown_field_in_an_unlocked_config_is_named():
    config = smoke_config("nll")
    with config.unlocked():
        config.optim.warmup_steps = 3
    with pytest.raises(ValueError, match=r"config.optim.warmup_steps is not a known field"):
        config_lib.validate(config)


# Two steps of every ablation's smoke variant (ModelConfig.tiny, byte-level tokenizer, generated data),
# on one device (sharding is tested in test_sharding.py).
_SMOKE_LOSSES = {}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_smoke_variant_trains_two_steps(name, tmp_path):
    config = smoke_config(name)
    assert config.model.name == "tiny" and config.tokenizer == "byte"
    final = run_in_process(config, tmp_path / name, devices=jax.devices()[:1])
    assert final["step"] == 2 and final["compilations"] == 1 and final["skipped_steps"] == 0
    for key in ("train/loss", "train/nll", "train/mean_p", "optim/grad_norm", "optim/param_norm"):
        assert math.isfinite(final[key]), key
    assert 0 <= final["train/kept_fraction"] <= 1
    assert (tmp_path / name / "config.json").exists()
    _SMOKE_LOSSES[name] = final["train/loss"]
    records = read_metrics(tmp_path / name)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("train/loss", "train/nll", "train/mean_p", "train/mean_gate", "train/mean_entropy",
                "train/kept_fraction", "optim/grad_norm", "optim/param_norm", "optim/lr", "perf/tokens_per_second",
                "perf/mfu", "perf/compilations"):
        assert key in records[-1], key
    assert list((tmp_path / name / "tensorboard").glob("events.out.tfevents.*"))
    if name in ("deformed_log", "deft", "cayley"):  # alpha: its mean and histogram over supervised tokens
        histogram = records[-1]["train/alpha_histogram"]
        assert sum(histogram) == records[-1]["train/supervised_tokens"]
        if name == "deformed_log":  # alpha = 0.5 for every token: all in bucket [0.5, 0.6)
            assert histogram[5] == sum(histogram) and records[-1]["train/mean_alpha"] == pytest.approx(0.5)
    if {"logp", "nll"} <= set(_SMOKE_LOSSES):  # the official alias is NLL: identical numbers
        assert _SMOKE_LOSSES["logp"] == _SMOKE_LOSSES["nll"]
