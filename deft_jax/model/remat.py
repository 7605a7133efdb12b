"""Named rematerialisation policies for the decoder layer (`ModelConfig.remat_policy`), as MaxText names them.

A policy says which of a layer's forward intermediates the backward pass keeps (saved in HBM, or offloaded
to pinned host memory and fetched back); the rest it recomputes from the layer's input. The decoder tags
its projections' outputs with `jax.ad_checkpoint.checkpoint_name`:

  query_proj, key_proj, value_proj   q, k, v before RoPE           out_proj   the attention's output proj.
  mlp_gate, mlp_up                   the MLP's two input proj.     mlp_down   the MLP's output proj.

  none                  no remat: every intermediate the backward needs is kept (most memory, no recompute)
  full                  keep only the layer input; recompute the whole layer (least memory, ~1/3 more FLOPs)
  minimal               keep every matmul output without batch dims (all projections; the attention's
                        batched products and the element-wise work are recomputed)
  save_dot_except_mlp   keep the attention projections (q, k, v, out); recompute the MLP
  save_qkv_proj         keep q, k, v; recompute the rest
  minimal_offloaded     as minimal, kept in pinned host memory instead of HBM
  qkv_proj_offloaded    as save_qkv_proj, kept in pinned host memory
"""
from __future__ import annotations

import jax

QKV_NAMES = ("query_proj", "key_proj", "value_proj")
ATTENTION_NAMES = QKV_NAMES + ("out_proj",)
MLP_NAMES = ("mlp_gate", "mlp_up", "mlp_down")
POLICIES = ("none", "full", "minimal", "save_dot_except_mlp", "save_qkv_proj", "minimal_offloaded",
            "qkv_proj_offloaded")
OFFLOAD = dict(offload_src="device", offload_dst="pinned_host")


def resolve_name(*, remat: bool, remat_policy: str) -> str:
    """The policy in force: remat_policy, or '' -> 'full' when remat else 'none' (remat is the old switch)."""
    if remat_policy == "":
        return "full" if remat else "none"
    if remat_policy not in POLICIES:
        raise ValueError(f"remat_policy={remat_policy!r}: expected one of {POLICIES} (or '' to follow remat)")
    if remat and remat_policy == "none":
        raise ValueError("remat=True contradicts remat_policy='none'; set one of them")
    return remat_policy


def policy(name: str):
    """The jax.checkpoint policy of `name` (None for 'full': save nothing but the inputs); not for 'none'."""
    policies = jax.checkpoint_policies
    table = {
        "full": lambda: None,
        "minimal": lambda: policies.dots_with_no_batch_dims_saveable,
        "save_dot_except_mlp": lambda: policies.save_only_these_names(*ATTENTION_NAMES),
        "save_qkv_proj": lambda: policies.save_only_these_names(*QKV_NAMES),
        "minimal_offloaded": lambda: policies.offload_dot_with_no_batch_dims(**OFFLOAD),
        "qkv_proj_offloaded": lambda: policies.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=list(QKV_NAMES), **OFFLOAD),
    }
    if name not in table:
        raise ValueError(f"remat policy {name!r} has no checkpoint policy; expected one of {tuple(table)}")
    return table[name]()
