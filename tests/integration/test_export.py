"""deft_jax.export: a smoke run's checkpoint as a Hugging Face directory that transformers (torch, CPU)
loads with the same logits and tokenization; clear errors for bad input."""
from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from deft_jax.training import setup as build
from deft_jax.training import checkpointing
from deft_jax import export
from deft_jax.model import decoder as model_lib
from tests.helpers.runs import run_module, subprocess_env, trained_smoke_run





@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    return trained_smoke_run(tmp_path_factory)


@pytest.mark.slow
def test_exported_run_loads_in_transformers_with_equal_logits(smoke_run, tmp_path):
    import torch
    import transformers

    out = tmp_path / "hf"
    done = run_module("deft_jax.export", f"--workdir={smoke_run}", f"--out={out}",
                      env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported step 2" in done.stderr

    config = build.load_run_config(smoke_run)
    setup = build.setup(config, devices=jax.devices()[:1], mesh_fallback=True)
    params = setup.restore_params(workdir=smoke_run, step=2)
    text = setup.tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}]) + "42"
    ids = setup.tokenizer.encode(text)

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    hf_model.eval()
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits[0].numpy()
    ours = np.asarray(model_lib.forward(params, setup.model_config, np.asarray([ids], np.int32)))[0]
    assert theirs.shape == ours.shape == (len(ids), setup.model_config.vocab_size)
    assert np.max(np.abs(theirs - ours)) <= 1e-4
    assert np.std(ours) > 1e-3  # not a degenerate model whose logits would match anything


@pytest.mark.slow
def test_export_bad_input(smoke_run, tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match=r"available steps: \[2\]"):
        export.export_run(workdir=smoke_run, out_dir=tmp_path / "a", step=5)
    with pytest.raises(ValueError, match="looks like a training workdir"):
        export.export_run(workdir=smoke_run, out_dir=smoke_run)
    with pytest.raises(ValueError, match="--dtype='int8'"):
        export.export_run(workdir=smoke_run, out_dir=tmp_path / "b", dtype="int8")
    done = run_module("deft_jax.export", f"--workdir={tmp_path / 'nothing'}", f"--out={tmp_path / 'c'}",
                      env=subprocess_env())
    assert done.returncode != 0
    assert "export: error:" in done.stderr and "does not exist" in done.stderr and "Traceback" not in done.stderr
