"""Which objective for my data? The base model's prior on a dataset, measured by teacher forcing.

    python -m deft_jax.probe --config configs/nll.py --config.data.task=gsm8k --config.data.path=gsm8k.jsonl \
        --num 64 --out_dir probe/gsm8k

For the first --num training examples of the config's data (chat template, response + EOS supervised, as
training sees them), every supervised token gets, under the base model's distribution π = softmax(z):

    p      = π_y                 the target's probability
    alpha  = Σ_v π_v²            DEFT's deformation exponent (the collision probability of π)
    H      = −Σ_v π_v log π_v    the entropy of π

The token mean of p places the data on the paper's continuum of prior strength. The thresholds are the
midpoints between the paper's regime means of p (its training curves): strong (math) ≈ 0.84,
intermediate (medical) ≈ 0.73, weak (FigFont) starting near 0:

    strong        mean p ≥ 0.785     (midway between 0.84 and 0.73)
    intermediate  0.365 ≤ mean p < 0.785
    weak          mean p < 0.365     (midway between 0.73 and 0)

and the recommendation follows the paper's results per regime (Llama-3.1-8B): with a strong prior −p beats
NLL (math 10.03 vs 6.49) and DEFT is best (11.35); with an intermediate prior the objectives are close
(medical 49.8-52.0, DEFT 52.00); with a weak prior −p collapses (FigFont 14.26 vs NLL 33.40) and DEFT is
best (46.34). Outputs: <out_dir>/probe.json, probe.md and probe_scatter.png (x = p, y = entropy,
colour = Σπ²).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import data as data_lib
from deft_jax import errors
from deft_jax.model import decoder as model_lib
from deft_jax.training import setup as build
from deft_jax.training import teacher_forced

REGIME_MEAN_P = {"strong": 0.84, "intermediate": 0.73, "weak": 0.0}
STRONG_THRESHOLD = (REGIME_MEAN_P["strong"] + REGIME_MEAN_P["intermediate"]) / 2    # 0.785
WEAK_THRESHOLD = (REGIME_MEAN_P["intermediate"] + REGIME_MEAN_P["weak"]) / 2        # 0.365


class ProbeError(errors.UserError):
    """Bad input to the probe (--num, data that tokenizes to nothing)."""

RECOMMENDATIONS = {
    "strong": ("deft", "a strong prior: probability-weighted objectives help (paper, math: −p 10.03 and DEFT "
                       "11.35 vs NLL 6.49); DEFT, or −p ('prob')"),
    "intermediate": ("deft", "an intermediate prior: the objectives are close (paper, medical: NLL 50.21, "
                             "DEFT 52.00); DEFT, NLL is a safe baseline"),
    "weak": ("deft", "a weak prior: −p collapses (paper, FigFont: −p 14.26 vs NLL 33.40) and DEFT is best "
                     "(46.34); DEFT or NLL, never −p"),
}


def regime(mean_p: float) -> str:
    """'strong', 'intermediate' or 'weak' by the thresholds of the module docstring."""
    if mean_p >= STRONG_THRESHOLD:
        return "strong"
    return "intermediate" if mean_p >= WEAK_THRESHOLD else "weak"


def token_statistics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Per-token p = π_y, alpha = Σ π², entropy = −Σ π log π of π = softmax(logits) ([..., V] -> [...])."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    probs = jnp.exp(log_probs)
    return {"p": jnp.exp(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]),
            "alpha": jnp.sum(probs * probs, axis=-1),
            "entropy": -jnp.sum(probs * log_probs, axis=-1)}


@dataclasses.dataclass
class Probe:
    """Per-token arrays (supervised tokens only) and where they place the data."""

    p: np.ndarray
    alpha: np.ndarray
    entropy: np.ndarray
    examples: int

    def summary(self) -> dict[str, Any]:
        def describe(values):
            quantiles = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
            return {"mean": float(values.mean()), **{f"q{int(q * 100)}": float(v) for q, v in
                                                     zip((0.1, 0.25, 0.5, 0.75, 0.9), quantiles)}}

        mean_p = float(self.p.mean())
        found = regime(mean_p)
        objective, reason = RECOMMENDATIONS[found]
        return {"examples": self.examples, "tokens": int(self.p.size), "p": describe(self.p),
                "alpha": describe(self.alpha), "entropy": describe(self.entropy),
                "fraction_p_below_0.1": float((self.p < 0.1).mean()),
                "fraction_p_above_0.9": float((self.p > 0.9).mean()),
                "regime": found, "thresholds": {"strong_if_mean_p_at_least": STRONG_THRESHOLD,
                                                "weak_if_mean_p_below": WEAK_THRESHOLD,
                                                "paper_regime_mean_p": REGIME_MEAN_P},
                "recommended_objective": objective, "reason": reason}


def measure(setup, params, tokenized: Sequence[Any], *, batch_size: int = 8) -> Probe:
    """Token statistics of the supervised tokens of `tokenized` under `params` (the evaluation setup's
    model, mesh and batching)."""
    @jax.jit
    def batch_statistics(params, inputs, positions, segment_ids, targets):
        logits = model_lib.forward(params, setup.model_config, inputs, positions=positions, segment_ids=segment_ids)
        return token_statistics(logits, targets)

    batches = teacher_forced.local_batches(setup, tokenized, rows=batch_size)
    collected = {"p": [], "alpha": [], "entropy": []}
    for batch in batches:
        stats = jax.device_get(batch_statistics(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                                                batch["targets"]))
        keep = (np.asarray(batch["loss_mask"]) != 0) & (np.asarray(batch["weights"])[:, None] != 0)
        for key in collected:
            collected[key].append(np.asarray(stats[key])[keep])
    return Probe(**{key: np.concatenate(values) for key, values in collected.items()}, examples=len(tokenized))


def markdown(summary: dict[str, Any], *, title: str) -> str:
    rows = [f"# Prior probe: {title}", "",
            f"{summary['examples']} examples, {summary['tokens']} supervised tokens.", "",
            "| statistic | mean | q10 | q25 | median | q75 | q90 |", "|---|---|---|---|---|---|---|"]
    for key, label in (("p", "p (target probability)"), ("alpha", "Σπ² (DEFT's α)"), ("entropy", "entropy H")):
        d = summary[key]
        rows.append(f"| {label} | {d['mean']:.3f} | {d['q10']:.3f} | {d['q25']:.3f} | {d['q50']:.3f} | "
                    f"{d['q75']:.3f} | {d['q90']:.3f} |")
    rows += ["", f"**Regime: {summary['regime']}** (strong if mean p ≥ {STRONG_THRESHOLD:.3f}, weak if < "
                 f"{WEAK_THRESHOLD:.3f}: midpoints of the paper's regime means of p, math 0.84, medical 0.73, "
                 "FigFont ≈ 0).",
             f"**Recommended objective: `{summary['recommended_objective']}`**: {summary['reason']}.", ""]
    return "\n".join(rows)


def scatter(probe: Probe, *, path: pathlib.Path, title: str, max_points: int = 20_000) -> pathlib.Path:
    """The token scatter: x = p, y = entropy, colour = Σπ² (a fixed subsample above max_points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = np.arange(probe.p.size)
    if index.size > max_points:
        index = np.random.default_rng(0).choice(index, size=max_points, replace=False)
    figure, axes = plt.subplots(figsize=(6, 4.5))
    points = axes.scatter(probe.p[index], probe.entropy[index], c=probe.alpha[index], s=4, cmap="viridis",
                          vmin=0, vmax=1, alpha=0.7)
    figure.colorbar(points, ax=axes, label="Σπ² (α)")
    axes.axvline(float(probe.p.mean()), color="red", linestyle="--", linewidth=1, label=f"mean p {probe.p.mean():.3f}")
    axes.set(xlabel="target probability p", ylabel="entropy H (nats)", xlim=(0, 1), title=title)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def probe_config(config, *, num: int, out_dir: str | pathlib.Path, devices=None, title: str | None = None,
                 plot: bool = True) -> dict[str, Any]:
    """Probe the base model of `config` on the first `num` training examples; writes the reports."""
    if num < 1:
        raise ProbeError(f"--num={num}: must be >= 1")
    setup = build.setup(config, devices=devices, mesh_fallback=True)
    params = setup.initial_params()
    examples = data_lib.load_examples(config.data, split="train")[:num]
    tokenized, report = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer, cfg=config.data)
    if not tokenized:
        raise ProbeError(f"no example of data.task={config.data.task!r} survived tokenization ({report.summary()})")
    probe = measure(setup, params, tokenized, batch_size=teacher_forced.global_rows(setup, requested=8))
    title = title or f"{config.model.name} on {config.data.task}"
    summary = {"title": title, "model": config.model.name, "task": config.data.task, **probe.summary()}
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out_dir / "probe.md").write_text(markdown(summary, title=title) + "\n")
    if plot:
        summary["scatter"] = str(scatter(probe, path=out_dir / "probe_scatter.png", title=title))
    return summary
