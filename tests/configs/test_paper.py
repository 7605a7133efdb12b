"""configs/paper/: every (model, regime) builds, validates against its planned slice, and carries the
paper's protocol (checked against the table below, written from the official code's settings)."""
import pathlib

import pytest

from deft_jax.training import setup as build
from deft_jax.training import config as config_lib
from deft_jax.model import presets

PAPER = pathlib.Path(__file__).resolve().parents[2] / "configs" / "paper"
FILES = sorted(p.stem for p in PAPER.glob("*.py") if p.stem not in ("__init__", "common"))
REGIMES = ("math", "medical", "figfont")
LEARNING_RATE = {"llama_3_1_8b": 2e-5}  # every other model: 5e-5
PROTOCOL = {"math": dict(max_length=3072, weight_decay=0.01), "medical": dict(max_length=800, weight_decay=0.01),
            "figfont": dict(max_length=800, weight_decay=1e-5)}
CHIPS = {"v5p-32": 16}


def test_one_file_per_paper_model():
    assert len(FILES) == 7
    models = {config_lib.load_config(f"{PAPER / name}.py").model.name for name in FILES}
    assert models == set(presets.names())


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("name", FILES)
def test_paper_config_builds_and_validates(name, regime):
    config = config_lib.load_config(f"{PAPER / name}.py:regime={regime},objective=nll")
    protocol = PROTOCOL[regime]
    assert config.objective.name == "nll" and config.loss.impl == "chunked"
    assert config.optim.lr == LEARNING_RATE.get(name, 5e-5)
    assert config.optim.weight_decay == protocol["weight_decay"]
    assert config.data.max_length == protocol["max_length"] and config.data.truncation == "truncate"
    assert (config.batch_size, config.num_epochs, config.optim.schedule, config.optim.warmup_ratio) == (256, 1.0, "cosine", 0.1)
    assert (config.optim.b1, config.optim.b2, config.optim.clip_norm) == (0.9, 0.95, 1.0)
    assert (config.model.dtype, config.model.param_dtype, config.model.remat) == ("bfloat16", "float32", True)
    assert config.data.task == {"math": "math", "medical": "jsonl", "figfont": "figfont"}[regime]
    config_lib.validate(config, num_devices=CHIPS["v5p-32"])
    architecture = build.architecture(config)
    assert architecture.remat and architecture.dtype == "bfloat16"


def test_paper_config_arguments():
    config = config_lib.load_config(f"{PAPER}/qwen2_5_math_1_5b.py:regime=medical,objective=deft,data_path=/d/m23k.jsonl,"
                               "eval_path=/d/m23k_test.jsonl,model_path=/ckpt/qwen,impl=naive")
    assert (config.data.path, config.data.eval_path) == ("/d/m23k.jsonl", "/d/m23k_test.jsonl")
    assert (config.model.name, config.objective.name, config.loss.impl) == ("/ckpt/qwen", "deft", "naive")
    with pytest.raises(ValueError, match="regime='code'"):
        config_lib.load_config(f"{PAPER}/qwen2_5_math_1_5b.py:regime=code")
    with pytest.raises(ValueError, match="planned for"):
        config_lib.load_config(f"{PAPER}/qwen2_5_math_1_5b.py:topology=v5e-4")
    with pytest.raises(ValueError, match="unknown"):
        config_lib.load_config(f"{PAPER}/qwen2_5_math_1_5b.py:objective=bogus")


@pytest.mark.parametrize("regime", ["math", "figfont"])
def test_paper_plans_set_the_attention_and_remat_policy_of_the_compile_table(regime):
    """The table's choice (splash + full remat: save_dot_except_mlp was no faster for more memory)."""
    from deft_jax.model import attention

    config = config_lib.load_config(f"{PAPER}/llama_3_1_8b.py:regime={regime}")
    model = build.architecture(config)
    assert (config.model.attention, model.remat_name) == ("auto", "full")
    assert attention.resolve(model.attention_spec, platform="tpu", seq_len=config.data.max_length) == "splash"
    assert attention.resolve(model.attention_spec, platform="cpu", seq_len=config.data.max_length) == "xla"
