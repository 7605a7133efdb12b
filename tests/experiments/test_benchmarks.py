"""Benchmark helpers: the torch reference step computes what ours computes; the timing loop interleaves."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from deft_jax.model import decoder as model_lib  # noqa: E402
from deft_jax import objectives  # noqa: E402
from experiments import bench_train, torch_reference  # noqa: E402


@pytest.mark.parametrize("name", torch_reference.TORCH_OBJECTIVES)
def test_official_loss_matches_our_objective(name):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    mask = (rng.random((2, 5)) < 0.7).astype(np.float32)
    ours = objectives.compute(name, jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    total, denominator = objectives.reduce_output(ours)
    reference = torch_reference.official_loss(torch.from_numpy(logits), torch.from_numpy(targets),
                                              torch.from_numpy(mask), objective=name)
    np.testing.assert_allclose(float(total / denominator), float(reference), rtol=1e-5)


def test_worker_steps_the_reference_model_in_a_child_process():
    config = model_lib.ModelConfig.tiny(vocab_size=64)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(2, 9))
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((2, 8), np.float32)}
    worker = torch_reference.TorchWorker(model_config=config, objectives=("nll",), batch=batch)
    try:
        losses = [worker.step("nll")[0] for _ in range(3)]
    finally:
        worker.close()
    assert abs(losses[0] - np.log(64)) < 0.5  # a random model starts near the uniform log V
    assert losses[2] < losses[0]  # AdamW steps on one repeated batch lower its loss
    with pytest.raises(ValueError, match="subset of"):
        torch_reference.TorchWorker(model_config=config, objectives=("prob",), batch=batch)


def test_time_cases_interleaves_rounds_with_untimed_warm_steps():
    calls = []

    def case(label, seconds=None):
        def step():
            calls.append(label)
            return seconds
        if seconds is not None:
            step.reports_seconds = True  # like the torch worker: the case reports its own time
        return step

    results = bench_train.time_cases({("a", "naive"): case("a"), ("b", "torch"): case("b", seconds=2.0)},
                                     rounds=2, steps=3, warm_steps=1, log=lambda message: None)
    assert calls == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2  # first calls, then per round: 1 warm + 3 timed
    assert results[("b", "torch")]["rounds"] == [2.0, 2.0] and results[("b", "torch")]["seconds_per_step"] == 2.0
    assert len(results[("a", "naive")]["rounds"]) == 2 and results[("a", "naive")]["seconds_per_step"] < 1.0
