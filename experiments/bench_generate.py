"""Load time of the default model, prefill and decode throughput of the generation engine
(deft_jax.inference.sampler.generate, greedy, one decode chunk; compile excluded).

    python experiments/bench_generate.py [--model smollm2-135m-instruct] [--batch 1 8] [--prompt-len 128]
        [--new-tokens 64] [--param-dtype float32] [--json PATH]

Each (batch) setting runs once to compile, then `--repeats` timed runs; the best run is reported.
Decode never stops early (the stop id is outside the vocabulary), so it always produces --new-tokens tokens.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import raw  # noqa: E402
from deft_jax.inference import sampler as S
from deft_jax.model import weights


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--param-dtype", default="float32")
    parser.add_argument("--json", default="", help="also write every timed run, the settings and the machine here")
    args = parser.parse_args(argv)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} devices)")
    start = time.perf_counter()
    config, params = weights.load_pretrained(args.model, param_dtype=args.param_dtype)
    jax.block_until_ready(params)
    figures = {"load_seconds": time.perf_counter() - start, "batches": []}
    print(f"load {args.model}: {figures['load_seconds']:.2f} s "
          f"({sum(x.size for x in jax.tree_util.tree_leaves(params)) / 1e6:.1f}M params, {args.param_dtype})")

    rng = np.random.default_rng(0)
    options = S.SamplerOptions(sampling=S.SamplingConfig(max_new_tokens=args.new_tokens), chunk_steps=args.new_tokens)
    stops = S.StopCriteria(token_ids=(config.vocab_size,))

    def run(prompts):
        timing = S.Timing()
        S.generate(params, config, prompts, stops=stops, pad_id=0, options=options, timing=timing)
        return timing

    for batch in args.batch:
        prompts = [rng.integers(3, config.vocab_size, size=args.prompt_len).tolist() for _ in range(batch)]
        compile_start = time.perf_counter()
        run(prompts)
        compile_seconds = time.perf_counter() - compile_start
        runs = [run(prompts) for _ in range(args.repeats)]
        prefill = min(r.prefill_seconds for r in runs)
        decode = min(r.decode_seconds for r in runs)
        print(f"batch {batch}: prefill {batch * args.prompt_len / prefill:8.1f} tokens/s "
              f"({batch}x{args.prompt_len} in {prefill:.3f} s) | decode {batch * args.new_tokens / decode:7.1f} "
              f"tokens/s ({batch}x{args.new_tokens} in {decode:.3f} s, {decode / args.new_tokens * 1e3:.1f} ms/step)"
              f" | first call incl. compile {compile_seconds:.1f} s")
        figures["batches"].append({"batch": batch, "compile_seconds": compile_seconds,
                                   "prefill_seconds": [r.prefill_seconds for r in runs],
                                   "decode_seconds": [r.decode_seconds for r in runs],
                                   "prefill_tokens": batch * args.prompt_len, "decode_tokens": batch * args.new_tokens})
    if args.json:
        raw.write(args.json, raw.record(script="bench_generate", settings=vars(args), figures=figures))
    return figures


if __name__ == "__main__":
    main()
