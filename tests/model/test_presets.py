"""Architecture presets: every paper model's parameter count matches its model card within 0.5% (counted
from abstract shapes, nothing materialised), a preset builds in the trainer for init=random, and the
optimizer-state shardings give Adam's moments the parameters' shardings and its count the replicated one."""
import jax
import pytest

from deft_jax.training import setup as build
from deft_jax.training import config as config_lib
from deft_jax.training import step as step_lib
from deft_jax.model import decoder as model_lib
from deft_jax.model import presets
from deft_jax import sharding as sharding_lib
from tests.helpers.runs import smoke_config

# From the model cards (rounded as published), independent of the presets' own table.
MODEL_CARD_PARAMS = {
    "meta-llama/Llama-3.1-8B": 8.03e9, "meta-llama/Llama-3.2-3B": 3.21e9, "Qwen/Qwen2.5-Math-1.5B": 1.54e9,
    "Qwen/Qwen2.5-Math-7B": 7.62e9, "Qwen/Qwen2.5-1.5B": 1.54e9, "Qwen/Qwen2.5-7B": 7.62e9,
    "deepseek-ai/deepseek-math-7b-base": 6.91e9,
}


@pytest.mark.parametrize("hub_id", sorted(MODEL_CARD_PARAMS))
def test_parameter_count_matches_the_model_card(hub_id):
    config = presets.model_config(hub_id)  # the hub id resolves to the preset
    shapes, _ = model_lib.abstract_params(config)
    count = model_lib.count_params(shapes)
    assert count == pytest.approx(MODEL_CARD_PARAMS[hub_id], rel=0.005)
    assert config.vocab_size == presets.hf_config(hub_id)["vocab_size"]


def test_llama_rope_scaling_and_qwen_biases():
    llama = presets.model_config("llama-3.1-8b")
    assert llama.rope_theta == 500000.0 and llama.rope_scaling_dict == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    assert (llama.n_kv_heads, llama.tie_embeddings) == (8, False)
    qwen = presets.model_config("Qwen2.5-Math-1.5B", dtype="bfloat16")
    assert qwen.qkv_bias and qwen.tie_embeddings and qwen.sliding_window is None and qwen.dtype == "bfloat16"
    assert presets.model_config("deepseek-math-7b-base").n_kv_heads == 32


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="llama-3.1-8b"):
        presets.model_config("llama-9b")


def test_trainer_builds_a_preset_abstractly():
    config = smoke_config("deft", **{"model.name": "llama-3.2-3b", "model.init": "random",
                                     "mesh.data": 1, "mesh.fsdp": 8})
    tokenizer = build.build_tokenizer(config)
    model_config = build.build_model_config(config, tokenizer=tokenizer)
    assert model_config.n_layers == 28 and model_config.dtype == "float32"  # the smoke config's dtype
    mesh = sharding_lib.make_mesh(data=1, fsdp=8, tensor=1)
    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    abstract, shardings = build.state_layout(model_config, optimizer, mesh, model_lib.DEFAULT_LOGICAL_RULES)
    assert model_lib.count_params(abstract.params) == pytest.approx(3.21e9, rel=0.005)
    embedding = shardings.params["embedding"]
    assert embedding.shard_shape(abstract.params["embedding"].shape) == (128256, 3072 // 8)
    with pytest.raises(ValueError, match="architecture preset"):
        build.pretrained_params(config_lib.apply_overrides(config, {"model.init": "pretrained"}),
                                model_config=model_config, mesh=mesh, rules=())


def test_optimizer_state_shardings_shard_the_moments_like_the_params():
    mesh = sharding_lib.make_mesh(data=2, fsdp=4, tensor=1)
    model_config = model_lib.ModelConfig.tiny()
    abstract_params, shardings = model_lib.param_layout(model_config, mesh=mesh,
                                                        rules=model_lib.DEFAULT_LOGICAL_RULES)
    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = sharding_lib.replicated(mesh)
    ours = sharding_lib.optimizer_state_shardings(optimizer, abstract_opt, param_shardings=shardings,
                                                  other=replicated)
    adam, decay = ours  # optax.chain(scale_by_adam, add_decayed_weights)
    assert jax.tree.structure(ours) == jax.tree.structure(abstract_opt)
    assert adam.mu == shardings and adam.nu == shardings and adam.count == replicated
    assert jax.tree.leaves(decay) == []
    assert any(s != replicated for s in jax.tree.leaves(ours))  # the moments are sharded, not replicated
