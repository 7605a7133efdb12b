"""Plots of the objective family. CLI: `python -m deft_jax.plots gates --out gates.png`.

`gates` draws, against the target probability p, each objective's gate (the stop-gradient weight of the
NLL gradient π − e_y) and the gate × error magnitude gate · (1 − p) (the size of the target logit's
gradient). The gates come from `deft_jax.objectives` itself (`objective_from_stats` on synthetic
statistics), so the figure shows what the code computes. The adaptive objectives depend on more than
p: DEFT on the collision probability C = Σπ² (drawn only where (p, C) is feasible, p² ≤ C ≤ p² + (1 − p)²,
for a large vocabulary), Cayley on the batch mean of p, EAFT on the normalised top-k entropy H̃.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

from deft_jax import objectives

P_GRID = np.logspace(-4, 0, 1201)
FAMILY = [  # (label, objective, params): gates that depend on p alone
    ("NLL (original, logp) = deformed α→0", "nll", {}),
    ("deformed α=0.25 (tsallis q=0.75)", "deformed_log", {"alpha": 0.25}),
    ("deformed α=0.5 (GeneralFamily-0.5)", "deformed_log", {"alpha": 0.5}),
    ("−p (p) = deformed α=1, and DFT", "prob", {}),
    ("deformed α=2 (GeneralFamily-2)", "deformed_log", {"alpha": 2.0}),
]
THRESHOLDS = [
    ("OnlyTopP-0.5", "only_top_p", {"tau": 0.5}),
    ("OnlyBottomP-0.5", "only_bottom_p", {"tau": 0.5}),
    ("OnlyTopLogP-0.1", "only_top_logp", {"tau": 0.1}),
    ("OnlyBottomLogP-0.1", "only_bottom_logp", {"tau": 0.1}),
]
FIXED = FAMILY + THRESHOLDS
DEFT_COLLISIONS = (1 / 49152, 0.05, 0.3, 0.6, 0.9)
CAYLEY_BATCH_MEANS = (0.01, 0.5, 0.9)
EAFT_ENTROPIES = (0.25, 0.75)


def _stats(*, p, collision=None, topk_entropy=None, topk=None) -> objectives.TokenStats:
    log_p = jnp.log(jnp.asarray(p, jnp.float32))
    zeros = jnp.zeros_like(log_p)
    return objectives.TokenStats(
        logsumexp=zeros, target_logit=log_p, log_p=log_p, lse2=zeros,
        collision=zeros if collision is None else jnp.full_like(log_p, collision), entropy=zeros,
        topk_entropy=None if topk_entropy is None else jnp.full_like(log_p, topk_entropy), topk=topk,
    )


def fixed_gates(*, p=P_GRID, cases=FIXED) -> list[tuple[str, np.ndarray]]:
    """(label, gate(p)) for objectives whose gate depends on p alone."""
    mask = np.ones_like(p, np.float32)
    return [(label, np.asarray(objectives.objective_from_stats(name, _stats(p=p), mask, **params).gate))
            for label, name, params in cases]


def deft_feasible(*, p, collision) -> np.ndarray:
    """p² ≤ C ≤ p² + (1 − p)²: the target's own mass bounds C below, one rival holding the rest above."""
    return (p**2 <= collision) & (collision <= p**2 + (1 - p) ** 2)


def adaptive_gates(*, p=P_GRID) -> list[tuple[str, str, np.ndarray]]:
    """(family, label, gate(p)) for DEFT (per C), Cayley (per batch mean p) and EAFT (per H̃); NaN where
    a DEFT curve's (p, C) is infeasible."""
    mask = np.ones_like(p, np.float32)
    curves = []
    for c in DEFT_COLLISIONS:
        gate = np.asarray(objectives.objective_from_stats("DEFT", _stats(p=p, collision=c), mask).gate, float)
        gate[~deft_feasible(p=p, collision=c)] = np.nan
        label = f"DEFT C={c:.2g}" + (" (uniform, V=49k)" if c < 1e-3 else "")
        curves.append(("deft", label, gate))
    log_p = jnp.log(jnp.asarray(p, jnp.float32))
    for mean_p in CAYLEY_BATCH_MEANS:
        alpha = objectives.cayley_alpha(p=jnp.exp(log_p), batch_mean_p=mean_p)
        _, gate = objectives.deformed_value_and_gate(log_p=log_p, alpha=alpha, epsilon=1e-8)
        curves.append(("cayley", f"Cayley, batch mean p={mean_p:g}", np.asarray(gate)))
    for entropy in EAFT_ENTROPIES:
        stats = _stats(p=p, topk_entropy=entropy, topk=20)
        gate = objectives.objective_from_stats("eaft", stats, mask).gate
        curves.append(("eaft", f"EAFT H̃={entropy:g}", np.asarray(gate)))
    return curves


def _save_small_png(fig, out: pathlib.Path, *, dpi: int) -> None:
    """Save as a 256-colour palette PNG (a few times smaller than RGBA, same look for line plots)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(out, format="PNG", optimize=True)


def draw_gates(out: str | pathlib.Path, *, dpi: int = 80) -> pathlib.Path:
    """Write the 3×2 gate figure (family / thresholds / adaptive; gate and gate·(1 − p)) to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = P_GRID
    error = 1 - p
    fig, axes = plt.subplots(3, 2, figsize=(15, 13), sharex=True)
    reference = fixed_gates(p=p, cases=[FAMILY[0], FAMILY[3]])  # NLL and −p, drawn as grey bands

    def plot_pair(row, values, **style):
        axes[row, 0].plot(p, values, **style)
        axes[row, 1].plot(p, values * error, **{k: v for k, v in style.items() if k != "label"})

    family_colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(FAMILY)))
    for (label, gate), color in zip(fixed_gates(p=p, cases=FAMILY), family_colors):
        plot_pair(0, gate, color=color, lw=2, label=label)

    for (label, gate), shade in zip(reference, ("0.8", "0.6")):
        plot_pair(1, gate, color=shade, lw=7, alpha=0.6, label=label.split(" =")[0])
        plot_pair(2, gate, color=shade, lw=7, alpha=0.6, label=label.split(" =")[0])
    threshold_colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for (label, gate), color, style in zip(fixed_gates(p=p, cases=THRESHOLDS), threshold_colors,
                                           ("-", "--", "-", "--")):
        plot_pair(1, gate, color=color, ls=style, lw=2, label=label)

    colors = {"deft": plt.cm.viridis(np.linspace(0.0, 0.85, len(DEFT_COLLISIONS))),
              "cayley": plt.cm.autumn(np.linspace(0.0, 0.75, len(CAYLEY_BATCH_MEANS))),
              "eaft": plt.cm.Greys(np.linspace(0.55, 0.85, len(EAFT_ENTROPIES)))}
    counters = {family: 0 for family in colors}
    order = {"eaft": 0, "cayley": 1, "deft": 2}  # DEFT drawn last, on top
    for family, label, gate in sorted(adaptive_gates(p=p), key=lambda curve: order[curve[0]]):
        color = colors[family][counters[family]]
        counters[family] += 1
        style = {"deft": "-", "cayley": "--", "eaft": ":"}[family]
        plot_pair(2, gate, color=color, ls=style, lw=2.2, label=label)

    row_titles = ["deformed-log family (1 − p^α)/α", "thresholds (tokens outside: out of sum and count)",
                  "adaptive: DEFT per C = Σπ², Cayley per batch mean p, EAFT per top-20 H̃"]
    for row in range(3):
        for column in (0, 1):
            ax = axes[row, column]
            ax.set_xscale("log")
            ax.set_xlim(p[0], 1.0)
            ax.set_ylim(-0.03, 1.06)
            ax.grid(True, which="major", alpha=0.3)
            ax.set_ylabel("gate" if column == 0 else "gate · (1 − p)")
            ax.set_title(f"{row_titles[row]}: gate" if column == 0 else "same objectives: gate × error",
                         fontsize=9.5)
        axes[row, 1].legend(*axes[row, 0].get_legend_handles_labels(), fontsize=8, loc="center left",
                            bbox_to_anchor=(1.02, 0.5), framealpha=0.9)
    for column in (0, 1):
        axes[2, column].set_xlabel("target probability p (log scale)")
    axes[2, 0].annotate("high C, low p (confident on another token):\nDEFT gate p^C stays small",
                        xy=(3e-3, 0.02), xytext=(2e-4, 0.3), fontsize=8,
                        arrowprops={"arrowstyle": "->", "color": "0.3"})
    fig.suptitle("deft_jax objectives: ∇_z loss = gate · (π − e_y); the error's target component is 1 − p.  "
                 "DEFT curves only where (p, C) is feasible: p² ≤ C ≤ p² + (1 − p)²", fontsize=10.5)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_small_png(fig, out, dpi=dpi)
    plt.close(fig)
    return out


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


SWEEP_PLOTTED_METRICS = ("score", "exact_match", "jaro_winkler", "nll", "mean_p")
BASE_STATUS = "base"  # a summary row with this status is the base model: drawn as a dashed line


def sweep_summary(rows, *, swept, path: str | pathlib.Path, title: str) -> pathlib.Path | None:
    """A sweep's metrics (generation score, NLL, mean p) against its swept field (PNG); None when no run has
    metrics. With one numeric swept field it is the x axis (log scale when it spans >= 20x and is
    positive); otherwise the runs are placed in order and labelled by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((row for row in rows if row.get("status") == BASE_STATUS), None)
    evaluated = [row for row in rows if row.get("nll") is not None and row is not base]
    if not evaluated:
        return None
    xs = [row.get(swept[0]) for row in evaluated] if len(swept) == 1 else None
    metrics = [m for m in SWEEP_PLOTTED_METRICS if any(row.get(m) is not None for row in evaluated)]
    if "jaro_winkler" in metrics and evaluated[0].get("scoring_task") == "figfont":
        metrics.remove("score")  # FigFont's score is its Jaro-Winkler
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        ys = [float("nan") if row.get(metric) is None else row.get(metric) for row in evaluated]
        if xs is not None and _numeric(xs):
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            axis.plot([xs[i] for i in order], [ys[i] for i in order], marker="o")
            axis.set_xlabel(swept[0])
            if min(xs) > 0 and max(xs) / min(xs) >= 20:
                axis.set_xscale("log")
        else:
            axis.bar(range(len(ys)), ys, color="tab:blue", alpha=0.8)  # categories (e.g. objectives): bars
            axis.set_xticks(range(len(ys)), [row["run"] for row in evaluated], rotation=45, ha="right", fontsize=7)
        if base is not None and base.get(metric) is not None:
            axis.axhline(base[metric], color="gray", linestyle="--", label="base model")
            axis.legend(fontsize=7)
        label = metric
        if metric == "score" and evaluated[0].get("scoring_task"):
            label = f"score ({evaluated[0]['scoring_task']})"
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = pathlib.Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deft_jax.plots", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gates = commands.add_parser("gates", help="gate and gate × error against p for every objective")
    gates.add_argument("--out", required=True, help="output PNG path (folders are created)")
    gates.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    if args.dpi < 20:
        parser.error(f"--dpi must be >= 20, got {args.dpi}")
    path = draw_gates(args.out, dpi=args.dpi)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
