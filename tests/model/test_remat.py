"""Remat policies: the same loss and gradients as no remat, with a different set of saved residuals."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from deft_jax.model import decoder as model_lib
from deft_jax.model import remat as remat_lib
from deft_jax.training import config as config_lib

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)


def _loss(config):
    def loss(params):  # next-token NLL of a random row
        logits = model_lib.forward(params, config, TOKENS[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), TOKENS[:, 1:, None], axis=-1))
    return loss


@pytest.fixture(scope="module")
def reference():
    config = model_lib.ModelConfig.tiny()
    params = model_lib.init_params(config, rng=jax.random.key(0))
    return config, params, jax.jit(jax.value_and_grad(_loss(config)))(params)


@pytest.mark.parametrize("policy", [p for p in remat_lib.POLICIES if p != "none"])
def test_every_policy_gives_the_loss_and_gradients_of_no_remat(reference, policy):
    config, params, (loss, grads) = reference
    got_loss, got_grads = jax.jit(jax.value_and_grad(_loss(config.replace(remat_policy=policy))))(params)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def _residuals(policy):
    config = model_lib.ModelConfig.tiny(scan_layers=False, remat_policy=policy)
    params = model_lib.init_params(config, rng=jax.random.key(0))
    found = saved_residuals(_loss(config), params)
    names = {m.group(1) for _, source in found for m in [re.search(r"named '(\w+)'", source)] if m}
    on_host = sum("host" in str(aval) for aval, _ in found)
    return len(found), names, on_host


def test_policies_save_what_they_say():
    counts = {}
    for policy in remat_lib.POLICIES:
        counts[policy], names, on_host = _residuals(policy)
        expected = {"save_qkv_proj": set(remat_lib.QKV_NAMES),
                    "save_dot_except_mlp": set(remat_lib.ATTENTION_NAMES)}.get(policy)
        if expected is not None:
            assert names == expected, policy
        assert (on_host > 0) == policy.endswith("_offloaded"), policy
    # full keeps the least, none the most; the named policies lie between, each adding what it names.
    assert counts["full"] < counts["save_qkv_proj"] < counts["save_dot_except_mlp"] < counts["none"]
    assert counts["full"] < counts["minimal"] < counts["none"]
    assert counts["minimal_offloaded"] == counts["minimal"] and counts["qkv_proj_offloaded"] == counts["save_qkv_proj"]


def test_remat_true_is_full_and_contradictions_are_errors():
    assert model_lib.ModelConfig.tiny(remat=True).remat_name == "full"
    assert model_lib.ModelConfig.tiny().remat_name == "none"
    assert model_lib.ModelConfig.tiny(remat=True, remat_policy="minimal").remat_name == "minimal"
    with pytest.raises(ValueError, match="contradicts"):
        model_lib.ModelConfig.tiny(remat=True, remat_policy="none")
    config = config_lib.default_config()
    with pytest.raises(config_lib.ConfigError, match="config.model.remat_policy must be one of"):
        config_lib.apply_overrides(config, {"model.remat_policy": "dots"})
    with pytest.raises(config_lib.ConfigError, match="contradicts"):
        config_lib.apply_overrides(config, {"model.remat": True, "model.remat_policy": "none"})
