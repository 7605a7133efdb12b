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
    assert estimate.tokens_per_second == pytest.approx(tokens / estimate.step_seconds)
    assert estimate.mfu == pytest.approx(1e12 / (4 * topology.chip.peak_flops * estimate.step_seconds))
