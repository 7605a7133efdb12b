"""The compiler's step-time estimate: loop-free 1- and 2-layer compiles extrapolated, against a full compile."""
import pytest

from deft_jax.aot import estimate as estimate_lib
from deft_jax.aot import programs as compile_lib
from tests.helpers.runs import smoke_config

pytestmark = pytest.mark.full_optimization  # the TPU compiler's figures, as users get them

# Tile-aligned shards on 4 chips (fsdp=4): a few seconds per compile.
SMALL = {"model.overrides": {"vocab_size": 512, "d_model": 256, "n_layers": 4, "n_heads": 2, "n_kv_heads": 2,
                             "head_dim": 128, "d_ff": 512},
         "data.seq_len": 128, "mesh.data": 1, "mesh.fsdp": 4, "batch_size": 8, "micro_batch_size": 8}


class FakeCompiled:
    def __init__(self, seconds, text):
        self.seconds, self.text = seconds, text

    def cost_analysis(self):
        return {"optimal_seconds": self.seconds, "flops": 1.0}

    def as_text(self):
        return self.text


def test_unpriced_custom_calls_are_added_back_and_a_non_time_is_an_error():
    text = 'a custom_call_target="ConcatBitcast" b custom_call_target="ConcatBitcast" c'
    assert estimate_lib.optimal_seconds(FakeCompiled(-1.9993, text)) == pytest.approx(0.0007)
    assert estimate_lib.optimal_seconds(FakeCompiled(0.25, "")) == 0.25
    with pytest.raises(compile_lib.CompileError, match="not a time"):
        estimate_lib.optimal_seconds(FakeCompiled(-0.5, ""))


def test_loop_free_config_unrolls_everything_and_keeps_the_rest():
    config = smoke_config("nll", **{**SMALL, "batch_size": 16, "micro_batch_size": 8,
                                    "loss.impl": "chunked", "loss.chunk_size": 128})
    free = estimate_lib.loop_free_config(config, n_layers=2)
    assert free.model.overrides.n_layers == 2 and free.model.scan_unroll == 2
    assert (free.batch_size, free.micro_batch_size) == (8, 0)
    assert free.loss.chunk_size == 8 * 128  # one chunk: no head scan
    assert free.model.overrides.d_model == 256 and config.model.overrides.n_layers == 4  # the rest, a copy
    assert estimate_lib.extrapolate([1.0, 1.5], n_layers=32) == pytest.approx(16.5)


def test_extrapolated_estimate_matches_a_fully_unrolled_compile_within_5_percent():
    pytest.importorskip("libtpu")
    config = smoke_config("nll", **SMALL)
    topology = compile_lib.parse_topology("v5e:2x2")
    devices = compile_lib.topology_devices(topology)
    tokens = 8 * 128
    estimate = estimate_lib.estimate_train_step(config, devices=devices, chips=4,
                                                peak_flops=topology.chip.peak_flops, flops_per_step=1e12,
                                                tokens_per_step=tokens, n_layers=4, micro_batches=1)
    unrolled = compile_lib.build_programs(estimate_lib.loop_free_config(config, n_layers=4), devices=devices)
    truth = estimate_lib.optimal_seconds(estimate_lib.compile_train(unrolled))
    assert estimate.step_seconds == pytest.approx(truth, rel=0.05)
    # The scanned program (what the trainer runs) counts its layer body once: the reason for all this.
    scanned = compile_lib.build_programs(config, devices=devices)
    assert estimate_lib.optimal_seconds(estimate_lib.compile_train(scanned)) < 0.8 * truth
    assert estimate.while_loops == 0  # the estimate's programs really are loop-free
    assert estimate.tokens_per_second == pytest.approx(tokens / estimate.step_seconds)
    assert estimate.mfu == pytest.approx(1e12 / (4 * topology.chip.peak_flops * estimate.step_seconds))


def test_splash_kernels_are_counted_from_the_hlo_and_priced_by_their_visible_blocks():
    text = "\n".join([
        '  %splash_mha_fwd_segmented_residuals.1 = (f32[8]) custom-call(%a), custom_call_target="tpu_custom_call"',
        '  %splash_mha_dq_segmented_no_residuals = (f32[8]) custom-call(%a), custom_call_target="tpu_custom_call"',
        '  %x = f32[8] custom-call(%b), custom_call_target="tpu_custom_call", metadata={op_name="jit(f)/splash_mha_dkv_x/pallas_call"}',
        '  %splash_mha_fwd_copy = f32[8] copy(%c)',  # not a custom call
        '  %other = f32[8] custom-call(%d), custom_call_target="tpu_custom_call"'])  # not splash
    assert estimate_lib.splash_calls(text) == {"splash_mha_fwd": 1, "splash_mha_dq": 1, "splash_mha_dkv": 1}
    from deft_jax.model import attention
    tiling = attention.splash_tiling(seq_len=1024, spec=attention.AttentionSpec("splash", block_q=512, block_kv=512))
    flops = estimate_lib.splash_kernel_flops(tiling=tiling, head_dim=128, heads_per_chip=32, rows_per_chip=2)
    per_matmul = 3 * 512 * 512 * 2 * 128 * 32 * 2  # 3 of the 2 x 2 blocks are causal-visible
    assert flops == {"splash_mha_fwd": 2 * per_matmul, "splash_mha_dq": 3 * per_matmul,
                     "splash_mha_dkv": 4 * per_matmul}


def test_an_estimate_faster_than_the_flops_bound_or_with_loops_is_unreliable():
    assert estimate_lib.reliability_problem(step_seconds=5.0, bound_seconds=4.0, while_loops=0) == ""
    assert "below the FLOPs lower bound" in estimate_lib.reliability_problem(step_seconds=3.0, bound_seconds=4.0,
                                                                             while_loops=0)
    assert "2 while loop(s)" in estimate_lib.reliability_problem(step_seconds=5.0, bound_seconds=4.0, while_loops=2)


def test_windowed_einsums_hide_fsdp_matmul_flops_and_the_estimate_turns_them_off():
    """An fsdp-sharded weight's all-gather + matmul (a layer's per-chip shape on v5p-32) compiles to a
    while loop over the shards, whose body cost_analysis counts once; the estimate's options keep it a
    plain matmul whose FLOPs are the hand count."""
    pytest.importorskip("libtpu")
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    devices = compile_lib.topology_devices(compile_lib.parse_topology("v5p-32"))
    mesh = jax.sharding.Mesh(np.array(devices), ("fsdp",))
    rows = NamedSharding(mesh, PartitionSpec("fsdp"))
    tokens, d_model, d_ff = 6144, 4096, 14336
    x = jax.ShapeDtypeStruct((len(devices) * tokens, d_model), jnp.bfloat16, sharding=rows)
    w = jax.ShapeDtypeStruct((d_model, d_ff), jnp.bfloat16, sharding=rows)
    lowered = jax.jit(jnp.dot, out_shardings=rows).lower(x, w)
    hand = 2 * tokens * d_model * d_ff
    windowed, plain = lowered.compile(), lowered.compile(compiler_options=estimate_lib.COMPILER_OPTIONS)
    assert re.search(r"\swhile\(", windowed.as_text()) and windowed.cost_analysis()["flops"] < 0.5 * hand
    assert not re.search(r"\swhile\(", plain.as_text())
    assert plain.cost_analysis()["flops"] == pytest.approx(hand, rel=0.01)
    # ... and its time is the hand count's at 80-95% of the published peak (459 TFLOP/s: no megacore 2x).
    assert 0.8 < hand / 459e12 / plain.cost_analysis()["optimal_seconds"] < 0.95
