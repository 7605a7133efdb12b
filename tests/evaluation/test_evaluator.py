"""deft_jax.evaluate: teacher-forced metrics vs the trainer and an independent NumPy reference, device-count
invariance, generation scoring end to end, the base model, and clear errors for bad input."""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from deft_jax.training import checkpointing
from deft_jax.training import setup as build
from deft_jax.evaluation import evaluator as evaluate
from tests.helpers.runs import run_module, subprocess_env, trained_smoke_run
from tests.helpers import models

ALPHA = 0.5  # configs/deformed_log.py default


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    return trained_smoke_run(tmp_path_factory)


@pytest.fixture(scope="module")
def eight_device_result(smoke_run, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval8")
    # 8 prompts in length-sorted batches of 3: batching and restoring the order are exercised.
    options = evaluate.EvalOptions(max_new_tokens=4, generation_batch_size=3)
    (result,) = evaluate.evaluate_run(workdir=smoke_run, out_dir=out_dir, options=options)
    return result


def trainer_eval_record(workdir: pathlib.Path) -> dict:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "eval/nll" in record][-1]


def padded_logits(params, model_config, tokens, *, length: int = 128) -> np.ndarray:
    """float64 logits [len(tokens), V] of one unbatched sequence; right padding (one compiled shape) does
    not change the causal logits of the real positions."""
    padded = np.zeros((1, length), np.int32)
    padded[0, :len(tokens)] = tokens
    logits = models.forward(params, model_config, padded)
    return np.asarray(logits, np.float64)[0, :len(tokens)]




def numpy_reference(workdir: pathlib.Path) -> dict[str, float]:
    """Per example, unpadded and unbatched: float64 log-softmax of the model's logits over the supervised
    positions; token means of NLL, argmax accuracy, p, p**alpha (the deformed-log gate) and entropy."""
    from deft_jax import data as data_lib

    config = build.load_run_config(workdir)
    setup = build.setup(config, devices=jax.devices()[:1], mesh_fallback=True)
    params = jax.device_get(setup.restore_params(workdir=workdir,
                                                    step=checkpointing.available_steps(workdir)[-1]))
    examples = data_lib.load_examples(config.data, split="eval")
    tokenized, _ = data_lib.tokenize_examples(examples, tokenizer=setup.tokenizer, cfg=config.data)
    nll, hits, probs, gates, entropies = [], [], [], [], []
    for example in tokenized:
        tokens = np.asarray(example.tokens)
        logits = padded_logits(params, setup.model_config, tokens[:-1])
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        targets = tokens[1:]
        supervised = example.loss_mask() > 0
        log_p = log_probs[np.arange(len(targets)), targets][supervised]
        nll += list(-log_p)
        probs += list(np.exp(log_p))
        gates += list(np.exp(ALPHA * log_p))
        hits += list((logits.argmax(-1) == targets)[supervised])
        entropies += list(-(np.exp(log_probs) * log_probs).sum(-1)[supervised])
    return {"nll": np.mean(nll), "token_accuracy": np.mean(hits), "mean_p": np.mean(probs),
            "mean_gate": np.mean(gates), "mean_entropy": np.mean(entropies), "supervised_tokens": len(nll)}


def test_teacher_forced_equals_trainer_eval_and_numpy_reference(smoke_run, eight_device_result):
    teacher = eight_device_result["teacher_forced"]
    logged = trainer_eval_record(smoke_run)
    assert eight_device_result["step"] == logged["step"]
    assert teacher["supervised_tokens"] == logged["eval/supervised_tokens"]
    for ours, theirs in (("nll", "eval/nll"), ("loss", "eval/loss"), ("mean_p", "eval/mean_p")):
        assert abs(teacher[ours] - logged[theirs]) <= 1e-5, (ours, teacher[ours], logged[theirs])
    reference = numpy_reference(smoke_run)
    assert teacher["supervised_tokens"] == reference["supervised_tokens"]
    for name in ("nll", "token_accuracy", "mean_p", "mean_gate", "mean_entropy"):
        assert abs(teacher[name] - reference[name]) <= 1e-5, (name, teacher[name], reference[name])
    assert teacher["mean_alpha"] == pytest.approx(ALPHA)


@pytest.mark.slow
def test_one_device_in_a_subprocess_gives_the_same_numbers(smoke_run, eight_device_result, tmp_path):
    done = run_module("deft_jax.evaluate", f"--workdir={smoke_run}", f"--out_dir={tmp_path}", "--max_new_tokens=4",
                      "--generation_batch_size=3", env=subprocess_env(devices=1))
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / f"step_{eight_device_result['step']}.json").read_text())
    assert one["devices"] == "1 x cpu" and eight_device_result["devices"] == "8 x cpu"
    for name, value in eight_device_result["teacher_forced"].items():
        assert abs(one["teacher_forced"][name] - value) <= 1e-5, name
    assert [r["prediction"] for r in one["predictions"]] == [r["prediction"] for r in eight_device_result["predictions"]]
    assert one["generation"]["score"] == eight_device_result["generation"]["score"]
    assert "step_" in done.stdout and "nll" in done.stdout  # the printed table


def test_two_processes_give_the_metrics_of_one(smoke_run, tmp_path, tmp_path_factory):
    """Two processes (2 fake CPU devices each, gloo) feed their own rows of each global batch: 7 examples in
    batches of 4 (2 rows per process; the last batch has a zero-weight padding row) give the numbers of
    one process on 8 devices, where all 7 sit in one batch."""
    import subprocess
    import sys

    from tests.helpers.runs import REPO_ROOT, free_port

    address = f"127.0.0.1:{free_port()}"
    flags = [f"--workdir={smoke_run}", "--nogenerate", "--num_eval=7", "--batch_size=4"]
    processes = []
    for process_id in range(2):
        env = subprocess_env(devices=2, extra={
            "DEFT_COORDINATOR_ADDRESS": address, "DEFT_NUM_PROCESSES": "2", "DEFT_PROCESS_ID": str(process_id)})
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "deft_jax.evaluate", *flags, f"--out_dir={tmp_path / str(process_id)}"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    (report,) = (tmp_path / "0").glob("step_*.json")
    two = json.loads(report.read_text())
    assert two["devices"] == "4 x cpu" and not (tmp_path / "1").exists()  # one global mesh, process 0 writes
    options = evaluate.EvalOptions(num_eval=7, generate=False)
    (one,) = evaluate.evaluate_run(workdir=smoke_run, options=options, write=False)
    assert one["devices"] == "8 x cpu"
    assert two["teacher_forced"]["examples"] == one["teacher_forced"]["examples"] == 7
    assert two["teacher_forced"]["supervised_tokens"] == one["teacher_forced"]["supervised_tokens"]
    for name, value in one["teacher_forced"].items():
        assert abs(two["teacher_forced"][name] - value) <= 1e-5 * max(1.0, abs(value)), name


def test_each_process_builds_only_its_rows_of_each_eval_batch(smoke_run, monkeypatch):
    """teacher_forced.local_batches asks sharding.process_rows for its block: process b of 2 gets rows
    [2b, 2b + 2) of every global batch of 4, and the two blocks side by side are the one-process batches."""
    from deft_jax import data as data_lib
    from deft_jax import sharding as sharding_lib
    from deft_jax.training import teacher_forced

    config = build.load_run_config(smoke_run)
    setup = build.setup(config, devices=jax.devices()[:1], mesh_fallback=True)
    examples = data_lib.load_examples(config.data, split="eval")[:7]
    tokenized, _ = data_lib.tokenize_examples(examples, tokenizer=setup.tokenizer, cfg=config.data)
    whole = teacher_forced.local_batches(setup, tokenized, rows=4)
    blocks = []
    for block in range(2):
        monkeypatch.setattr(sharding_lib, "process_rows", lambda mesh, *, global_rows, b=block: (b, 2))
        blocks.append(teacher_forced.local_batches(setup, tokenized, rows=4))
    assert len(whole) == len(blocks[0]) == len(blocks[1]) == 2
    for k, batch in enumerate(whole):
        assert blocks[0][k]["inputs"].shape[0] == 2
        for key, value in batch.items():
            np.testing.assert_array_equal(np.concatenate([blocks[0][k][key], blocks[1][k][key]]), value,
                                          err_msg=key)
    assert blocks[1][1]["weights"].tolist() == [1.0, 0.0]  # example 7 of 7, then the padding row


def test_generation_report_structure(smoke_run, eight_device_result):
    generation = eight_device_result["generation"]
    records = eight_device_result["predictions"]
    config = build.load_run_config(smoke_run)
    assert generation["scoring_task"] == "reasoning_gym" and generation["max_new_tokens"] == 4
    assert generation["num_scored"] == len(records) == config.data.num_eval
    assert [r["index"] for r in records] == list(range(config.data.rg_eval_start,
                                                       config.data.rg_eval_start + config.data.num_eval))
    assert all(0.0 <= r["score"] <= 1.0 and isinstance(r["prediction"], str) for r in records)
    assert generation["score"] == pytest.approx(np.mean([r["score"] for r in records]))
    assert generation["examples_per_second"] > 0
    json_path, md_path = map(pathlib.Path, eight_device_result["reports"])
    assert json.loads(json_path.read_text())["teacher_forced"]["nll"] == eight_device_result["teacher_forced"]["nll"]
    assert "| step_" in md_path.read_text() and "## Generations" in md_path.read_text()


def _examples(task: str, **data_fields):
    from configs import nll

    config = nll.get_config("smoke")
    config.data.task = task
    for key, value in data_fields.items():
        config.data[key] = value
    return evaluate.eval_examples(config, num_eval=None)


@pytest.mark.parametrize("task, fields", [
    ("reasoning_gym:basic_arithmetic", {"num_eval": 4}),
    ("figfont", {"num_eval": 4}),
    ("gsm8k", {"path": "GSM8K", "eval_path": "GSM8K", "num_eval": 4}),
])
def test_scoring_the_references_scores_one_and_wrong_answers_less(task, fields, shared_data_dir):
    from deft_jax import data as data_lib
    from deft_jax.model.tokenizer import load_tokenizer

    fields = {k: str(shared_data_dir / "gsm8k_test.jsonl") if v == "GSM8K" else v for k, v in fields.items()}
    examples = _examples(task, **fields)
    prompts = data_lib.make_generation_prompts(examples, tokenizer=load_tokenizer("byte"))
    assert len(prompts) == 4 and all(p.reference for p in prompts)
    assert evaluate.score_predictions(prompts, [p.reference for p in prompts]) == [1.0] * 4
    wrong = evaluate.score_predictions(prompts, ["zzzz 77777"] * 4)
    assert all(score < 1.0 for score in wrong)


def test_generations_match_uncached_greedy_decoding(smoke_run, eight_device_result):
    """The evaluator's batched, length-sorted KV-cache generations == per prompt, a loop of full forwards
    (no cache, no padding) taking the argmax, stopping at EOS."""
    from deft_jax import data as data_lib

    config = build.load_run_config(smoke_run)
    setup = build.setup(config, devices=jax.devices()[:1], mesh_fallback=True)
    params = setup.restore_params(workdir=smoke_run, step=eight_device_result["step"])
    prompts = data_lib.make_generation_prompts(evaluate.eval_examples(config, num_eval=None),
                                               tokenizer=setup.tokenizer)
    assert len({len(p.prompt_ids) for p in prompts}) > 1  # unequal lengths: padding and reordering matter
    max_new_tokens = eight_device_result["generation"]["max_new_tokens"]
    for prompt, record in zip(prompts, eight_device_result["predictions"]):
        tokens = list(prompt.prompt_ids)
        new = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(padded_logits(params, setup.model_config, tokens)[-1]))
            if token == setup.tokenizer.eos_id:
                break
            new.append(token)
            tokens.append(token)
        assert record["index"] == prompt.index
        assert record["prediction"] == setup.tokenizer.decode(new, skip_special_tokens=True)


def test_base_model_row(smoke_run, eight_device_result, tmp_path):
    from configs import deformed_log

    options = evaluate.EvalOptions(generate=False)
    (from_run,) = evaluate.evaluate_run(workdir=smoke_run, base=True, out_dir=tmp_path / "a", options=options)
    (from_config,) = evaluate.evaluate_run(config=deformed_log.get_config("smoke"), base=True,
                                           out_dir=tmp_path / "b", options=options)
    assert from_run["base"] and from_run["step"] is None and (tmp_path / "a" / "base.json").is_file()
    for name in ("nll", "mean_p", "token_accuracy"):
        assert from_run["teacher_forced"][name] == pytest.approx(from_config["teacher_forced"][name], abs=1e-6)
    # Two steps at lr 1e-3 move the NLL: the base row is not the fine-tuned checkpoint.
    assert from_run["teacher_forced"]["nll"] - eight_device_result["teacher_forced"]["nll"] > 0.05


def test_bad_input_errors(smoke_run, tmp_path):
    step = checkpointing.available_steps(smoke_run)[-1]
    with pytest.raises(checkpointing.CheckpointError, match=rf"no checkpoint for step 999 .* available steps: \[{step}\]"):
        evaluate.evaluate_run(workdir=smoke_run, steps=999, out_dir=tmp_path)
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(smoke_run / "config.json", no_checkpoint / "config.json")
    with pytest.raises(checkpointing.CheckpointError, match="no checkpoint under"):
        evaluate.evaluate_run(workdir=no_checkpoint)
    with pytest.raises(FileNotFoundError, match="is not a training run's workdir"):
        evaluate.evaluate_run(workdir=tmp_path)
    # The same checkpoint under a config whose MLP is half as wide (ModelConfig.tiny: d_model 64, d_ff 128).
    other = tmp_path / "other_model"
    shutil.copytree(smoke_run, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["overrides"]["d_ff"] = 64
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpointing.CheckpointError) as error:
        evaluate.evaluate_run(workdir=other, out_dir=tmp_path / "x")
    message = str(error.value)
    assert "different model config" in message
    assert "layers/mlp/down_proj/kernel: checkpoint (2, 128, 64) vs config (2, 64, 64)" in message
    assert "layers/mlp/up_proj/kernel: checkpoint (2, 64, 128) vs config (2, 64, 64)" in message
    assert "embedding" not in message  # only the tensors that differ are listed


@pytest.mark.slow
def test_cli_errors_are_messages_not_tracebacks(smoke_run, tmp_path):
    env = subprocess_env(devices=1)
    missing_step = run_module("deft_jax.evaluate", f"--workdir={smoke_run}", "--step=999", env=env)
    empty = run_module("deft_jax.evaluate", f"--workdir={tmp_path}", env=env)
    for done, expected in ((missing_step, "available steps: ["), (empty, "not a training run's workdir")):
        assert done.returncode != 0
        assert expected in done.stderr and "evaluate: error:" in done.stderr
        assert "Traceback" not in done.stderr


def test_restore_from_a_relative_workdir(smoke_run, eight_device_result, monkeypatch):
    """A workdir given relative to the current directory restores the same params (orbax's metadata read
    returns nothing for relative paths, so checkpoint paths are made absolute)."""
    config = build.load_run_config(smoke_run)
    setup = build.setup(config, devices=jax.devices()[:1], mesh_fallback=True)
    step = eight_device_result["step"]
    expected = jax.device_get(setup.restore_params(workdir=smoke_run, step=step))
    monkeypatch.chdir(smoke_run.parent)
    relative = pathlib.Path(smoke_run.name)
    assert checkpointing.param_shapes(workdir=relative, step=step)
    restored = jax.device_get(setup.restore_params(workdir=relative, step=step))
    jax.tree.map(np.testing.assert_array_equal, restored, expected)
