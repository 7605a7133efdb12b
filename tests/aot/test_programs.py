"""deft_jax.compile: the trainer's programs compiled for TPU slices described by libtpu (no TPU here).

Shapes are chosen TPU-tile aligned (multiples of 8 x 128 per chip), so the compiler's argument bytes equal
the analytic sizes up to a few padded scalars."""

import re
import pytest
from deft_jax.aot import programs as compile_lib
from tests.helpers.runs import smoke_config

pytestmark = pytest.mark.full_optimization  # the TPU compiler's figures, as users get them


pytest.importorskip("libtpu")


# A small decoder whose per-chip shards (fsdp=8) are whole TPU tiles.
V, D, L, H, HD, F = 1024, 1024, 8, 8, 128, 128


ALIGNED = {"model.overrides": {"vocab_size": V, "d_model": D, "n_layers": L, "n_heads": H, "n_kv_heads": H,
                               "head_dim": HD, "d_ff": F},
           "data.seq_len": 128, "mesh.data": 1, "mesh.fsdp": 8}


@pytest.mark.parametrize("name, jax_name, chips", [
    ("v5p-32", "v5p:2x2x4", 16), ("v4-32", "v4:2x2x4", 16), ("v5p-8", "v5p:2x2x1", 4), ("v5e-16", "v5e:4x4", 16),
    ("v6e-8", "v6e:2x4", 8), ("v6e:4x4", "v6e:4x4", 16), ("V5P:2x2x2", "v5p:2x2x2", 8)])
def test_topology_names(name, jax_name, chips):
    topology = compile_lib.parse_topology(name)
    assert (topology.jax_name, topology.chips) == (jax_name, chips)


@pytest.mark.parametrize("name, message", [
    ("v5p-33", "count TensorCores"), ("v5p-24", "no v5p slice of 12 chips"), ("v7x-8", "not a TPU slice name"),
    ("v5p:2x2", "3 dimensions"), ("tpu", "not a TPU slice name")])
def test_bad_topology_names(name, message):
    with pytest.raises(compile_lib.CompileError, match=message):
        compile_lib.parse_topology(name)


def test_train_step_on_v5p_2x2x2_matches_analytic_bytes():
    config = smoke_config("nll", **ALIGNED, micro_batch_size=16)  # one micro-batch: the quickest compile
    report = compile_lib.compile_report(config, topology="v5p:2x2x2", programs=("train",))
    assert (report["chips"], report["hosts"], report["mesh"]) == (8, 2, {"data": 1, "fsdp": 8, "tensor": 1})
    train = report["programs"]["train"]["bytes"]
    sharded = V * D + L * (4 * D * H * HD + 3 * D * F)  # every kernel and the embedding split over fsdp
    replicated = L * 2 * D + D  # the norms
    params = 4 * (sharded // 8 + replicated)
    assert train["parts"]["params"] == params
    assert train["parts"]["optimizer"] == 2 * params + 4  # Adam's two moments and its int32 step count
    analytic = sum(train["parts"].values())
    assert analytic <= train["arguments"] <= analytic * 1.001  # the compiler's view: the same state
    assert train["aliased"] >= 3 * params  # the donated state is updated in place
    assert report["fits"] and report["programs"]["train"]["fits"]
    costs = report["costs"]
    tokens = config.batch_size * 128
    assert costs["flops_per_step"] == pytest.approx(costs["flops_per_token"] * tokens)
    assert costs["tokens_per_second_at_50_mfu"] == pytest.approx(0.5 * 8 * 459e12 / costs["flops_per_token"])


def test_eval_and_generation_on_a_four_host_slice():
    config = smoke_config("deft", **{"micro_batch_size": 16, "eval.batch_size": 16})
    generation = compile_lib.GenerationShape(batch_size=4, prompt_len=32, max_new_tokens=8)
    report = compile_lib.compile_report(config, topology="v5e:4x4", programs=("eval", "prefill", "decode"),
                                        generation=generation)
    assert (report["chips"], report["hosts"]) == (16, 4)
    assert set(report["programs"]) == {"eval", "prefill", "decode"}
    cache = report["programs"]["decode"]["bytes"]["parts"]["kv_cache"]
    # k and v: [L, B, prompt + new, Hkv, hd] in float32 (the smoke model computes in float32), replicated.
    assert cache >= 2 * 2 * 4 * 40 * 2 * 16 * 4
    assert all(program["fits"] for program in report["programs"].values())


def test_a_config_that_cannot_fit_says_what_to_change():
    config = smoke_config("deft", **{"model.overrides": {"vocab_size": 262144, "d_model": 16384},
                                     "eval.batch_size": 8})
    report = compile_lib.compile_report(config, topology="v5e:2x2", programs=("eval",))
    assert not report["fits"] and not report["programs"]["eval"]["fits"]
    (problem,) = report["problems"]
    assert problem.startswith("eval does not fit") and "ran out of HBM" in problem
    assert re.search(r"largest: params 16\.\d GiB", problem) and "more fsdp (config.mesh.fsdp, now 1)" in problem


def test_a_mesh_that_does_not_match_the_topology_is_an_error():
    config = smoke_config("deft", **{"mesh.data": 1, "mesh.fsdp": 8})
    with pytest.raises(compile_lib.CompileError, match="16 chips"):
        compile_lib.compile_report(config, topology="v5p-32", programs=("train",))
