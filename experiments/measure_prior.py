"""The base model's prior on candidate tasks (deft_jax.probe): mean target probability on training targets.

    python experiments/measure_prior.py                      # SmolLM2-135M-Instruct, 16 examples per task
    python experiments/measure_prior.py --num 24 --out experiments/prior.md
    python experiments/measure_prior.py --json experiments/results/prior/record.json   # raw record
    python experiments/measure_prior.py --smoke              # tiny random model (plumbing only)

For each candidate task, the first N training examples go through the project's own pipeline (chat
template, response + EOS supervised, deft_jax.data) and the base model (deft_jax.probe): mean p =
Σ p_token / N_tokens over every supervised token, the median p, Σπ², entropy, the token NLL, the regime
the probe places the task in and the mean example length. `self_distill` is built here: the base
model's own greedy answers (EOS-terminated within --distill_tokens, else dropped) to GSM8K questions,
cached as JSONL under --cache_dir and read back through the `jsonl` source — strong by construction.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from deft_jax.training import setup as build

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import raw  # noqa: E402

GSM8K_PATH = REPO_ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"

# name -> data.* overrides (train split; first --num examples). rg tasks: seed 1.
CANDIDATES = {
    "figfont": dict(task="figfont"),
    "gsm8k": dict(task="gsm8k", path=str(GSM8K_PATH), eval_fraction=0.1, split_seed=0),
    "number_sorting": dict(task="reasoning_gym:number_sorting", rg_seed=1),
    "number_sorting_easy": dict(task="reasoning_gym:number_sorting", rg_seed=1,
                                rg_kwargs=dict(min_numbers=3, max_numbers=4, min_decimals=0, max_decimals=0,
                                               min_value=0, max_value=99)),
    "word_sorting": dict(task="reasoning_gym:word_sorting", rg_seed=1),
    "self_distill": None,  # built from the base model's greedy answers (see module docstring)
}


def candidate_config(*, base_arg: str, overrides: dict, num: int, max_length: int):
    """The study's base config with data.* set for one candidate (rg_kwargs as a ConfigDict)."""
    import ml_collections

    from configs import base

    config = base.get_base_config(base.parse_arg(base_arg))
    config.model.dtype = "float32"
    overrides = dict(overrides)
    config.data.rg_kwargs = ml_collections.ConfigDict(overrides.pop("rg_kwargs", {}))
    for key, value in overrides.items():
        config.data[key] = value
    config.data.num_train = num
    config.data.max_length = max_length
    config.data.seq_len = None
    config.data.bucket_lengths = (128, 192, 256, 384, 512, 768, 1024, 2048)
    config.data.truncation = "drop"
    config.eval.batch_size = 8
    base.set_objective(config, "nll")
    return config


def measure(setup, params, examples) -> dict:
    """deft_jax.probe's token statistics of `examples`: mean p, Σπ², entropy, NLL, the regime it places the
    task in and the objective it recommends, plus lengths."""
    import numpy as np

    from deft_jax import data as data_lib
    from deft_jax.evaluation import probe

    tokenized, report = data_lib.tokenize_examples(list(examples), tokenizer=setup.tokenizer, cfg=setup.config.data)
    measured = probe.measure(setup, params, tokenized)
    summary = measured.summary()
    return {"mean_p": summary["p"]["mean"], "median_p": summary["p"]["q50"], "mean_alpha": summary["alpha"]["mean"],
            "mean_entropy": summary["entropy"]["mean"], "nll": float(-np.log(np.maximum(measured.p, 1e-30)).mean()),
            "regime": summary["regime"], "recommended_objective": summary["recommended_objective"],
            "examples": len(tokenized), "supervised_tokens": summary["tokens"],
            "mean_length": float(np.mean([len(t.tokens) for t in tokenized])),
            "max_length": int(max(len(t.tokens) for t in tokenized)), "dropped": report.summary()}


def build_self_distill(setup, params, *, num: int, max_new_tokens: int, cache_dir: pathlib.Path) -> pathlib.Path:
    """<cache_dir>/self_distill.jsonl: GSM8K questions with the base model's EOS-terminated greedy answers."""
    from deft_jax import data as data_lib
    from deft_jax.inference import sampler

    path = cache_dir / f"self_distill_{num}_{max_new_tokens}.jsonl"
    if path.is_file():
        return path
    source = candidate_config(base_arg=_BASE_ARG, overrides=CANDIDATES["gsm8k"], num=2 * num, max_length=4096)
    examples = data_lib.load_examples(source.data, split="train")
    prompts = data_lib.make_generation_prompts(examples, tokenizer=setup.tokenizer)
    options = sampler.SamplerOptions(sampling=sampler.SamplingConfig(max_new_tokens=max_new_tokens))
    stops = sampler.StopCriteria(token_ids=(setup.tokenizer.eos_id,))
    rows = []
    for first in range(0, len(prompts), 8):
        chunk = prompts[first:first + 8]
        samples = sampler.generate(params, setup.model_config, [p.prompt_ids.tolist() for p in chunk],
                                   stops=stops, pad_id=setup.tokenizer.pad_id, options=options,
                                   decode_text=lambda ids: setup.tokenizer.decode(ids, skip_special_tokens=True))
        for example, sample in zip(examples[first:first + 8], samples):
            if sample.stop_reason != sampler.STOP_TOKEN:
                continue  # truncated: its EOS would not be the model's own
            answer = sample.text
            if answer.strip():
                rows.append({"question": example.messages[-1]["content"], "answer": answer})
        if len(rows) >= num:
            break
    print(f"self_distill: {len(rows)} of the GSM8K questions tried got a greedy answer ending with EOS within "
          f"{max_new_tokens} tokens", flush=True)
    if not rows:
        raise RuntimeError(f"no greedy answer ended with EOS within {max_new_tokens} tokens; raise --distill_tokens")
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows[:num]))
    temporary.replace(path)
    return path


_BASE_ARG = ""


def main(argv=None) -> None:
    global _BASE_ARG
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=16, help="training examples per task")
    parser.add_argument("--tasks", default=",".join(CANDIDATES), help=f"comma-separated, of {list(CANDIDATES)}")
    parser.add_argument("--smoke", action="store_true", help="tiny random model + byte tokenizer (plumbing only)")
    parser.add_argument("--distill_tokens", type=int, default=96, help="greedy tokens per self_distill answer")
    parser.add_argument("--cache_dir", default="runs/prior", help="where self_distill's JSONL is cached")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) and JSON beside it")
    parser.add_argument("--json", default=None, help="also write the per-task figures, settings and machine here")
    args = parser.parse_args(argv)
    _BASE_ARG = "smoke" if args.smoke else ""
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"measure_prior: unknown task(s) {unknown}; choose from {list(CANDIDATES)}")

    from deft_jax import data as data_lib

    started = time.perf_counter()
    max_length = 1024 if args.smoke else 2048
    reference_config = candidate_config(base_arg=_BASE_ARG, overrides=CANDIDATES["figfont"], num=args.num,
                                        max_length=max_length)
    setup = build.setup(reference_config, mesh_fallback=True)
    params = setup.initial_params()
    results = {}
    for name in tasks:
        task_started = time.perf_counter()
        overrides = CANDIDATES[name]
        if overrides is None:
            path = build_self_distill(setup, params, num=args.num, max_new_tokens=args.distill_tokens,
                                      cache_dir=pathlib.Path(args.cache_dir))
            overrides = dict(task="jsonl", path=str(path))
        num = args.num
        if name == "self_distill":  # fewer rows when fewer greedy answers ended with EOS
            num = min(num, sum(1 for line in pathlib.Path(overrides["path"]).read_text().splitlines() if line))
        config = candidate_config(base_arg=_BASE_ARG, overrides=overrides, num=num, max_length=max_length)
        task_setup = build.setup(config, mesh_fallback=True)
        examples = data_lib.load_examples(config.data, split="train")
        results[name] = measure(task_setup, params, examples)
        results[name]["seconds"] = time.perf_counter() - task_started
        print(f"{name}: mean p {results[name]['mean_p']:.3f} ({results[name]['seconds']:.0f}s)", flush=True)
    table = format_table(results, model=reference_config.model.name, num=args.num)
    print(table)
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if args.json:
        raw.write(args.json, raw.record(script="measure_prior", settings=vars(args),
                                        figures={"model": reference_config.model.name, "tasks": results}))


def format_table(results: dict, *, model: str, num: int) -> str:
    lines = [f"Base {model}: teacher-forced target probability on the first {num} training examples "
             f"(response + EOS supervised; deft_jax.probe)", "",
             "| task | mean p (token mean) | median p | mean Σπ² | mean entropy | NLL | regime | examples | "
             "tokens/example (mean, max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(results.items(), key=lambda item: item[1]["mean_p"]):
        lines.append(f"| {name} | {r['mean_p']:.3f} | {r['median_p']:.3f} | {r['mean_alpha']:.3f} | "
                     f"{r['mean_entropy']:.3f} | {r['nll']:.3f} | {r['regime']} | {r['examples']} | "
                     f"{r['mean_length']:.0f}, {r['max_length']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
