"""The compile tool's evaluation pricing: its arithmetic by hand, and the report on a tiny compiled decode."""
import pytest

from deft_jax.aot import estimate as E

pytestmark = pytest.mark.full_optimization  # the TPU compiler's figures, as users get them

GIB = 2**30


def test_evaluation_cost_by_hand():
    cost = E.evaluation_cost(step_seconds=0.02, slots=256, chips=16, mean_sample_tokens=1024)
    # 256 slots over 16 chips, one token per slot per 20 ms step: 16 / 0.02 = 800 tokens/s per chip.
    assert cost["tokens_per_second_per_chip"] == pytest.approx(800.0)
    assert cost["tokens_per_second"] == pytest.approx(12_800.0)
    # 1517 problems x 16 samples x 1024 tokens = 24,854,528 tokens; / 800 = 31,068.16 s = 8.63004 chip-hours.
    assert cost["tokens"] == 24_854_528
    assert cost["chip_hours"] == pytest.approx(31_068.16 / 3600)
    assert cost["slice_hours"] == pytest.approx(31_068.16 / 3600 / 16)


def test_decode_bytes_and_slots_that_fit_by_hand():
    # 7e9 float32 weights split over tensor=2 (14e9 bytes per chip) plus a 4 GiB cache.
    assert E.decode_hbm_bytes(n_params=7e9, param_itemsize=4, tensor=2, kv_cache_bytes=4 * GIB) == 14e9 + 4 * GIB
    # 256 slots in groups of 16 (the row split): 4 GiB of cache = 0.25 GiB per group of slots; 6 GiB is not
    # cache; 0.9 x 32 GiB = 28.8 GiB -> (28.8 - 6) / 0.25 = 91.2 groups -> 91 x 16 = 1456 slots.
    assert E.slots_that_fit(slots=256, multiple=16, total_bytes=10 * GIB, kv_cache_bytes=4 * GIB,
                            capacity=32 * GIB) == 1456


def test_report_prices_the_compiled_decode_step():
    pytest.importorskip("libtpu")
    from deft_jax.aot import programs as P
    from tests.helpers.runs import smoke_config

    config = smoke_config("nll", **{"micro_batch_size": 4, "eval.batch_size": 4})
    generation = P.GenerationShape(batch_size=4, prompt_len=32, max_new_tokens=8, slots=6, prefill_chunk=16)
    report = P.compile_report(config, topology="v5e:2x2", programs=("prefill", "decode"), generation=generation)
    assert report["decode_slots"] == 8 and report["decode_row_split"] == 4  # 6 slots rounded up to the split
    report = E.add_evaluation_to_report(config, report, mean_sample_tokens=100)
    e = report["evaluation"]
    decode = report["programs"]["decode"]["bytes"]
    # The cache: k and v [L, 8 slots, Hkv, 32 + 8 -> 256 (kv_bucket), hd] float32, rows split over 4 chips.
    model = E.build.architecture(config)
    kv = 2 * model.n_layers * 2 * model.n_kv_heads * 256 * model.head_dim * 4
    assert decode["parts"]["kv_cache"] >= kv
    assert e["hbm"]["step_seconds"] == pytest.approx(e["hbm_bytes_per_step_per_chip"] / 819e9)
    assert e["compiler"]["step_seconds"] > 0
    # Compiled without windowed einsums, the one-step decode programs have no loop but the chunk's own (one
    # trip), so the estimate is trusted unless it beats the HBM bound.
    assert e["compiler_while_loops"] == 0
    assert bool(e["compiler_problem"]) == (e["compiler"]["step_seconds"] < e["hbm"]["step_seconds"])
    for name in ("hbm", "compiler"):
        assert e[name]["tokens_per_second_per_chip"] == pytest.approx(8 / 4 / e[name]["step_seconds"])
        assert e[name]["chip_hours"] == pytest.approx(1517 * 16 * 100 / e[name]["tokens_per_second_per_chip"] / 3600)


def test_a_decode_out_of_hbm_gets_no_slot_extrapolation_and_says_so():
    from tests.helpers.runs import smoke_config

    config = smoke_config("nll")
    # What compile_report gives for a decode the compiler refused: no bytes but the analytic parts.
    result = {"jax_topology": "v5e:2x2", "mesh": {"data": 1, "fsdp": 4, "tensor": 1}, "costs": {"params": 1e9},
              "generation": {"batch_size": 4, "prompt_len": 32, "max_new_tokens": 8, "slots": 8, "prefill_chunk": 16},
              "decode_slots": 8, "decode_row_split": 4,
              "programs": {"decode": {"fits": False, "bytes": {"total": 0, "parts": {"kv_cache": 20 * GIB}}}}}
    e = E.add_evaluation_to_report(config, result, compiler=False)["evaluation"]
    assert e["slots_that_fit"] is None
    assert "the decode does not fit: compile fewer --slots" in E.format_evaluation({"evaluation": e})
