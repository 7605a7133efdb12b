"""The train loop in process: accumulation, schedule, non-finite skipping, bad input, kill/resume.
(Signals to the CLI: tests/integration/test_train_resume.py.)"""

import math
import jax
import numpy as np
import pytest
from deft_jax.training import config as config_lib
from deft_jax.training import step as step_lib
from deft_jax.training import setup as build
from deft_jax.training import checkpointing
from deft_jax.training import loop as train
from deft_jax import data as data_lib
from deft_jax import sharding as sharding_lib
from tests.helpers.runs import (params_leaves, run_in_process, smoke_config)


def _one_device_run(**overrides):
    config = smoke_config("deft", **{"mesh.data": 1, "batch_size": 8, "micro_batch_size": 8, **overrides})
    return build.setup(config, devices=jax.devices()[:1])


def _first_batch(run):
    iterator = data_lib.train_iterator_from_config(train.tokenized_split(run, split="train"), cfg=run.config.data,
                                                   batch_size=run.config.batch_size)
    return sharding_lib.put_batch(next(iterator), mesh=run.mesh, global_rows=run.config.batch_size,
                                  keys=data_lib.BATCH_KEYS)


def _one_step(run, batch, state=None):
    with sharding_lib.mesh_context(run.mesh, run.rules):
        state = run.initial_state() if state is None else state
        before = params_leaves(state)
        step = run.train_step()
        new_state, metrics = step(state, batch, run.schedule(total_steps=run.config.total_steps).as_arrays())
        return before, new_state, jax.device_get(metrics)


def test_four_micro_batches_of_two_equal_one_batch_of_eight(tmp_path):
    whole = _one_device_run()
    micro = _one_device_run(micro_batch_size=2)
    assert (whole.spec.num_micro_batches, micro.spec.num_micro_batches) == (1, 4)
    batch = _first_batch(whole)
    counts = np.asarray(batch["loss_mask"]).reshape(2, 4, -1).swapaxes(0, 1).sum(axis=(1, 2))
    assert len(set(counts.tolist())) > 1, "micro-batches should hold different token counts"
    before, state_1, metrics_1 = _one_step(whole, batch)
    _, state_4, metrics_4 = _one_step(micro, batch)
    for key in ("train/loss", "train/nll", "train/mean_gate", "optim/grad_norm", "train/supervised_tokens"):
        np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=2e-6, err_msg=key)
    # The same update: AdamW's first step is ~lr·g/(|g| + eps), so compare to a small fraction of lr.
    lr = float(metrics_1["optim/lr"])
    for p0, p1, p4 in zip(before, params_leaves(state_1), params_leaves(state_4)):
        np.testing.assert_allclose(p4 - p0, p1 - p0, rtol=1e-3, atol=1e-3 * lr)
    assert metrics_1["train/loss"] > 0 and metrics_1["optim/lr"] > 0


def test_mean_of_micro_means_is_the_official_normalisation(tmp_path):
    run = _one_device_run(micro_batch_size=2, **{"loss.accumulation": "mean_of_micro_means"})
    batch = _first_batch(run)
    _, _, metrics = _one_step(run, batch)
    # Independent reference: each micro-batch's token mean of the DEFT loss, averaged.
    loss_fn = jax.jit(lambda params, micro: step_lib.loss_fn(params, micro, loss=run.spec.loss))
    with sharding_lib.mesh_context(run.mesh, run.rules):
        params = run.initial_state().params
        means, totals, dens = [], [], []
        for m in range(4):
            micro = {k: np.asarray(v)[m::4] for k, v in batch.items()}
            total, aux = loss_fn(params, micro)
            totals.append(float(total))
            dens.append(float(aux["denominator"]))
            means.append(float(total) / float(aux["denominator"]))
    np.testing.assert_allclose(metrics["train/loss"], np.mean(means), rtol=1e-5)
    exact = sum(totals) / sum(dens)
    assert abs(np.mean(means) - exact) > 1e-4 * abs(exact)  # the two normalisations differ here


def test_non_finite_step_is_skipped_and_counted(tmp_path):
    run = _one_device_run()
    batch = _first_batch(run)
    targets = np.asarray(batch["targets"]).copy()
    row, col = np.argwhere(np.asarray(batch["loss_mask"]) > 0)[0]
    targets[row, col] = run.model_config.vocab_size  # out of range and supervised: NaN loss
    bad = dict(batch, targets=jax.device_put(targets, batch["targets"].sharding))
    before, state, metrics = _one_step(run, bad)
    assert not math.isfinite(metrics["train/loss"]) and metrics["optim/finite"] == 0
    assert int(state.step) == 1 and int(state.skipped_steps) == 1
    for got, want in zip(params_leaves(state), before):
        assert np.array_equal(got, want)
    assert int(state.opt_state[0].count) == 0  # AdamW did not count the skipped step
    _, state, metrics = _one_step(run, batch, state=state)
    assert metrics["optim/finite"] == 1 and int(state.step) == 2 and int(state.skipped_steps) == 1
    assert int(state.opt_state[0].count) == 1


def _reference_cosine(step, *, lr, total, warmup_ratio, min_ratio=0.0):
    """transformers/verl get_cosine_schedule_with_warmup (num_cycles 0.5), written out independently."""
    warmup = int(total * warmup_ratio)
    if step < warmup:
        return lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return lr * max(0.0, min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_schedule_with_warmup(min_ratio):
    for step in (0, 1, 5, 9, 10, 11, 50, 99, 100):
        schedule = step_lib.Schedule(lr=5e-5, total_steps=100, warmup_ratio=0.1, min_lr_ratio=min_ratio)
        got = float(step_lib.scheduled_learning_rate(step, schedule.as_arrays()))
        assert got == pytest.approx(_reference_cosine(step, lr=5e-5, total=100, warmup_ratio=0.1,
                                                      min_ratio=min_ratio), rel=1e-5, abs=1e-12)


def test_loss_impl_is_never_a_silent_fallback(tmp_path):
    run = _one_device_run()
    bad = step_lib.LossSpec(model_config=run.model_config, objective=run.spec.loss.objective, impl="fancy")
    with pytest.raises(ValueError, match="config.loss.impl='fancy'"):
        step_lib.forward_objective({}, {"inputs": None, "targets": None, "loss_mask": None, "positions": None,
                                        "segment_ids": None}, loss=bad)


@pytest.fixture
def compile_counter():
    events = []

    def listener(name, duration, **kwargs):
        if "backend_compile" in name:
            events.append(name)
    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("case", ["unwritable_workdir", "mesh_mismatch", "config_typo", "batch_indivisible"])
def test_bad_input_fails_before_compilation(case, tmp_path, compile_counter):
    config = smoke_config("nll")
    workdir = tmp_path / "run"
    if case == "unwritable_workdir":
        (tmp_path / "a_file").write_text("x")
        workdir = tmp_path / "a_file" / "run"
        error, message = PermissionError, "is not writable"
    elif case == "mesh_mismatch":
        config = config_lib.apply_overrides(config, {"mesh.data": 3})
        error, message = ValueError, r"data=3 x fsdp=1 x tensor=1 = 3 devices, but JAX sees 8"
    elif case == "config_typo":
        with config.unlocked():
            config.optim.learning_rate = 1e-3
        error, message = ValueError, "config.optim.learning_rate is not a known field"
    else:
        config = config_lib.apply_overrides(config, {"batch_size": 12, "micro_batch_size": 0})
        error, message = ValueError, r"config.batch_size=12 .* not divisible by the data-parallel size 8"
    with pytest.raises(error, match=message):
        train.train_and_evaluate(config, workdir)
    assert compile_counter == []


def test_a_refused_resume_leaves_the_runs_config_record_and_checkpoints_usable(tmp_path):
    workdir = tmp_path / "run"
    run_in_process(smoke_config("deft", total_steps=2), workdir)
    record = (workdir / "config.json").read_text()
    changed = smoke_config("deft", **{"total_steps": 4, "model.scan_layers": False})
    with pytest.raises(config_lib.ConfigError, match=r"checkpoint .*/2 holds other parameters than this config"):
        run_in_process(changed, workdir)
    assert (workdir / "config.json").read_text() == record
    config = build.load_run_config(workdir)
    setup = build.setup(config, mesh_fallback=True)
    params = checkpointing.restore_params(workdir=workdir, step=2, abstract_params=setup.abstract_params,
                                          shardings=setup.param_shardings)
    assert jax.tree.structure(params) == jax.tree.structure(setup.abstract_params)


def test_resume_falls_back_from_a_corrupt_latest_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path, capsys):
    settings = {"total_steps": 4, "checkpoint.every_steps": 2}
    reference = run_in_process(smoke_config("deft", **settings), tmp_path / "reference")
    workdir = tmp_path / "run"
    run_in_process(smoke_config("deft", **settings), workdir)
    step_dir = checkpointing.checkpoint_dir(workdir) / "4" / checkpointing.STATE_ITEM
    data_file = max((p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)), key=lambda p: p.stat().st_size)
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    capsys.readouterr()
    final = run_in_process(smoke_config("deft", **settings), workdir)
    err = capsys.readouterr().err
    assert "checkpoint 4 is corrupt" in err and "falling back to step 2" in err
    assert f"resumed from {checkpointing.checkpoint_dir(workdir)}/2" in err
    assert any(p.name.startswith("4.corrupt-") for p in checkpointing.checkpoint_dir(workdir).iterdir())
    assert final["step"] == 4
    for got, want in zip(params_leaves(final["state"]), params_leaves(reference["state"])):
        assert np.array_equal(got, want)


def test_program_counter_counts_the_lowerings_of_its_function_only():
    """jax.monitoring's lowering events, attributed by function name while counting: one per new shape."""
    from deft_jax.training import metrics as metrics_lib

    counter = metrics_lib.ProgramCounter(fun_name="train_step")

    def train_step(x):
        return x * 2

    def other(x):
        return x + 1

    step, other_step = jax.jit(train_step), jax.jit(other)
    with counter.counting():
        step(np.ones(3)), step(np.ones(3)), other_step(np.ones(3)), step(np.ones(4))
    step(np.ones(5))  # not counted: outside counting()
    assert counter.count == 2
    assert step._cache_size() == 3  # JAX's own (private) count of the three programs, as a cross-check


def test_a_fresh_run_compiles_its_step_before_the_state_exists_and_only_once(tmp_path, monkeypatch):
    """The compiler's heap and the 3 copies of the parameters (params, AdamW moments) never coexist: the
    step is compiled from the state's shapes, then the state is built, and the first call compiles nothing."""
    from deft_jax.training import metrics as metrics_lib

    events = []

    def listener(name, duration, **kwargs):
        if name == metrics_lib.LOWERING_EVENT and kwargs.get("fun_name") == "jit(train_step)":
            events.append("train step lowered")
    jax.monitoring.register_event_duration_secs_listener(listener)
    initial_state = build.Setup.initial_state

    def recorded(self):
        events.append("state built")
        return initial_state(self)
    monkeypatch.setattr(build.Setup, "initial_state", recorded)
    try:  # a clip norm of its own: a step no other test compiled in this process
        final = run_in_process(smoke_config("deft", **{"total_steps": 2, "optim.clip_norm": 0.7071}),
                               tmp_path / "run")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert events == ["train step lowered", "state built"]
    assert final["compilations"] == 1 and final["step"] == 2
