"""The torch + transformers reference train step that experiments/bench_train.py times beside ours.

The same architecture (`weights.config_to_hf` of our ModelConfig, random weights), the same batch, AdamW
(0.9, 0.95, weight decay 0.01) and the official DEFT code's loss formulas, written as the
official trainer writes them (full [tokens, V] log-softmax, plus a softmax for DEFT's α = Σπ²):

    nll   loss = Σ −log p · mask / Σ mask
    deft  loss = Σ (1 − p^α) / (α + 1e-6) · mask / Σ mask,   α = stop_gradient(Σ_v π_v²)

`TorchWorker` runs the reference in a child process, so that torch's allocator and thread pool do not
touch the timings of the JAX process beside it (measured: a JAX step right after an in-process torch step
ran ≈ 3 s slower). Needs the `bench` (or `test`) extra: torch and transformers.
"""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Mapping, Sequence

import numpy as np

TORCH_OBJECTIVES = ("nll", "deft")


def make_model(model_config, *, attention: str = "sdpa", seed: int = 0):
    """transformers AutoModelForCausalLM with our architecture and random weights, float32, train mode."""
    import torch
    import transformers

    from deft_jax.model import weights

    torch.manual_seed(seed)
    hf = weights.config_to_hf(model_config)
    config = transformers.AutoConfig.for_model(**hf)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention,
                                                          torch_dtype=torch.float32)
    return model.train()


def official_loss(logits, targets, mask, *, objective: str):
    """Per-micro-batch token mean of the official objective (logits [B, T, V] float32)."""
    import torch

    log_probs = torch.log_softmax(logits, dim=-1)
    log_p = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if objective == "nll":
        per_token = -log_p
    elif objective == "deft":
        alpha = (torch.softmax(logits, dim=-1) ** 2).sum(-1).detach()
        per_token = (1 - torch.exp(log_p) ** alpha) / (alpha + 1e-6)
    else:
        raise ValueError(f"torch reference objective {objective!r}: expected one of {TORCH_OBJECTIVES}")
    return (per_token * mask).sum() / (mask.sum() + 1e-8)


def make_train_step(model, *, objective: str, lr: float = 5e-5):
    """step(batch of numpy arrays) -> loss float: forward, official loss, backward, clip 1.0, AdamW."""
    import torch

    if objective not in TORCH_OBJECTIVES:
        raise ValueError(f"torch reference objective {objective!r}: expected one of {TORCH_OBJECTIVES}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)

    def step(batch: Mapping[str, np.ndarray]) -> float:
        inputs = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
        targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
        mask = torch.from_numpy(np.asarray(batch["loss_mask"], np.float32))
        logits = model(input_ids=inputs).logits.float()
        loss = official_loss(logits, targets, mask, objective=objective)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())

    return step


def _serve(connection, model_config, objectives: Sequence[str], batch: Mapping[str, np.ndarray]) -> None:
    model = make_model(model_config)
    steps = {objective: make_train_step(model, objective=objective) for objective in objectives}
    connection.send("ready")
    while (objective := connection.recv()) is not None:
        start = time.perf_counter()
        loss = steps[objective](batch)
        connection.send((loss, time.perf_counter() - start))


class TorchWorker:
    """The reference train steps in a child process: `step(objective)` -> (loss, seconds inside the child)."""

    def __init__(self, *, model_config, objectives: Sequence[str], batch: Mapping[str, np.ndarray]):
        unknown = sorted(set(objectives) - set(TORCH_OBJECTIVES))
        if unknown:
            raise ValueError(f"torch reference objectives {unknown}: expected a subset of {TORCH_OBJECTIVES}")
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, model_config, tuple(objectives), dict(batch)),
                                        daemon=True)
        self._process.start()
        if self._connection.recv() != "ready":
            raise RuntimeError("the torch reference worker did not start")

    def step(self, objective: str) -> tuple[float, float]:
        self._connection.send(objective)
        return self._connection.recv()

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=30)
