"""Sampling throughput of the default model, side by side in one run (compilation excluded):

  decode ms/step of the engine (sampler.generate) at batch 1 and 8 (prompt 128, 64 new tokens), and, for n = 16
  samples of one 128-token prompt (64 new tokens, temperature 1):
    shared   deft_jax.sampler, the prompt prefilled once and its cache repeated 16 times;
    rows     deft_jax.sampler with share_prefill=False: 16 independent rows, each prefilled;
    generate sampler.generate with the prompt repeated 16 times (one sample each, per-row keys).

    python experiments/bench_sampler.py [--model smollm2-135m-instruct] [--repeats 2] [--json PATH]

Each setting runs once to compile, then --repeats timed runs interleaved across settings; the best is
reported. Decoding never stops early (the stop id lies outside the vocabulary).
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
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8], help="generate batch sizes (none: skip)")
    parser.add_argument("--json", default="", help="also write every timed run, the settings and the machine here")
    args = parser.parse_args(argv)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    print(f"machine: {cpu}, {os.cpu_count()} cpus, avx2={' avx2' in flags}, avx512f={' avx512f' in flags}, "
          f"load average {os.getloadavg()[0]:.1f}, jax {jax.__version__} on {jax.devices()[0].platform}")
    config, params = weights.load_pretrained(args.model)
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, config.vocab_size, size=args.prompt_len).tolist()
    never = config.vocab_size
    greedy = S.SamplingConfig(max_new_tokens=args.new_tokens)
    sampled = S.SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)
    stops = S.StopCriteria(token_ids=(never,))

    def generate_batch(batch):
        def run():
            timing = S.Timing()
            S.generate(params, config, [prompt] * batch, stops=stops, pad_id=0, timing=timing,
                       options=S.SamplerOptions(sampling=greedy, chunk_steps=args.new_tokens))
            return timing.prefill_seconds + timing.decode_seconds, timing.decode_seconds / args.new_tokens
        return run

    def generate_n():
        start = time.perf_counter()
        S.generate(params, config, [prompt] * args.n, stops=stops, pad_id=0,
                   options=S.SamplerOptions(sampling=sampled, chunk_steps=args.new_tokens))
        return time.perf_counter() - start, None

    def sampler_n(share):
        options = S.SamplerOptions(n=args.n, sampling=sampled, max_rows=args.n, share_prefill=share,
                                   chunk_steps=args.new_tokens)

        def run():
            start = time.perf_counter()
            for _ in S.sample(params, config, [S.Request(0, tuple(prompt))], options=options,
                              stops=stops, decode_text=None, pad_id=0,
                              progress=False):
                pass
            return time.perf_counter() - start, None
        return run

    settings = {f"generate batch {batch}": generate_batch(batch) for batch in args.batch}
    settings.update({f"n={args.n} shared prefill (sampler)": sampler_n(True),
                f"n={args.n} independent rows (sampler)": sampler_n(False),
                     f"n={args.n} generate path (prompt x {args.n})": generate_n})
    figures = {"settings": [{"name": name, "rows": int(name.rsplit(" ", 1)[1]) if name.startswith("generate batch")
                             else args.n, "runs": []} for name in settings]}  # a list: the order of the table
    for name, run in settings.items():
        start = time.perf_counter()
        run()
        figures["settings"][list(settings).index(name)]["compile_seconds"] = time.perf_counter() - start
        print(f"compiled {name} in {time.perf_counter() - start:.0f} s", flush=True)
    best: dict[str, tuple[float, float | None]] = {}
    for _ in range(args.repeats):
        for name, run in settings.items():
            seconds, per_step = run()
            figures["settings"][list(settings).index(name)]["runs"].append({"seconds": seconds, "decode_seconds_per_step": per_step})
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, per_step)
    print(f"\nload average now {os.getloadavg()[0]:.1f}\n")
    print("| setting | seconds (prefill + decode) | new tokens/s | decode ms/step |\n|---|---|---|---|")
    for name, (seconds, per_step) in best.items():
        rows = int(name.rsplit(" ", 1)[1]) if name.startswith("generate batch") else args.n
        step = f"{per_step * 1e3:.1f}" if per_step is not None else "–"
        print(f"| {name} | {seconds:.2f} | {rows * args.new_tokens / seconds:.1f} | {step} |")
    if args.json:
        raw.write(args.json, raw.record(script="bench_sampler", settings=vars(args), figures=figures))
    return figures


if __name__ == "__main__":
    main()
