"""Real datasets on the axes study's (prior × ambiguity) plane: the probe (deft_jax.evaluation.probe) on
SmolLM2-135M-Instruct, mean p and measured ambiguity (the fraction of supervised tokens with more than one
near-top token) over the first --num training examples of each dataset.

    python -m experiments.continuum.axes_real --num 8     # writes experiments/continuum/results/axes/real_data.json

Datasets: FigFont (reasoning-gym, generated locally), GSM8K and MATH-500 (JSONL under --data_dir). The
paper's medical set is not available here; the docs give only the paper's mean p for it.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

OUT = REPO_ROOT / "experiments" / "continuum" / "results" / "axes" / "real_data.json"


def datasets(data_dir: pathlib.Path) -> dict:
    return {"figfont": dict(task="figfont"),
            "gsm8k": dict(task="gsm8k", path=str(data_dir / "gsm8k_test.jsonl"), eval_fraction=0.1, split_seed=0),
            "math500": dict(task="math", path=str(data_dir / "math500_test.jsonl"), eval_fraction=0.1, split_seed=0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="continuum-axes-real", description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--tasks", default="figfont,gsm8k,math500")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--smoke", action="store_true", help="tiny random model (plumbing only)")
    args = parser.parse_args(argv)
    from deft_jax import data as data_lib
    from deft_jax.evaluation import probe
    from deft_jax.training import setup as build
    from experiments import measure_prior

    known = datasets(pathlib.Path(args.data_dir))
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        print(f"continuum-axes-real: error: unknown dataset(s) {unknown}; choose from {sorted(known)}", file=sys.stderr)
        return 2
    out = {"model": "tiny random model (smoke)" if args.smoke else "SmolLM2-135M-Instruct", "examples": args.num,
           "near_top_ratio": probe.NEAR_TOP_RATIO, "datasets": {}}
    setup = params = None
    for name in tasks:
        started = time.perf_counter()
        config = measure_prior.candidate_config(base_arg="smoke" if args.smoke else "", overrides=known[name],
                                                num=args.num, max_length=2048)
        if setup is None:
            setup = build.setup(config, mesh_fallback=True)
            params = setup.initial_params()
        examples = data_lib.load_examples(config.data, split="train")[:args.num]
        tokenized, _ = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer, cfg=config.data)
        found = probe.measure(setup, params, tokenized)
        summary = found.summary()
        out["datasets"][name] = {"mean_p": summary["p"]["mean"], "ambiguity": summary["ambiguity"],
                                 "mean_near_top": summary["near_top"]["mean"], "mean_entropy": summary["entropy"]["mean"],
                                 "tokens": summary["tokens"], "seconds": time.perf_counter() - started}
        print(f"{name}: mean p {summary['p']['mean']:.3f}, measured ambiguity {summary['ambiguity']:.3f} "
              f"({summary['tokens']} tokens, {time.perf_counter() - started:.0f}s)", flush=True)
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
