"""Delivered tokens/s of continuous batching, static batching and transformers `generate`, side by side in
one run on the same rows, and greedy decode at batch 1 and 8 against transformers.

    python experiments/bench_continuous.py --data-dir PATH/TO/DATA [--num-prompts 16] [--n 4]
        [--max-new-tokens 384] [--slots 16] [--greedy-batch 1 8] [--json results.json]

Sampled setting: the first --num-prompts MATH-500 problems (<data-dir>/math500_test.jsonl) in the paper's
template (qwen-boxed), n samples each, temperature 1, top_p 1, up to --max-new-tokens new tokens, the
model's stop tokens and stop strings; rows stop where the model stops, so their lengths vary.
  continuous   deft_jax sampler, batching='continuous', --slots decode slots;
  static       deft_jax sampler, batching='static', length batches of --slots rows;
  transformers `generate` (do_sample, top_k 0, float32) on batches of --slots rows (each prompt n times),
               left-padded, until every row of the batch stops.
Delivered tokens = the tokens of each sample up to and including its stop token (what the scorer reads);
tokens/s = delivered tokens / wall seconds. The two deft_jax settings run once untimed first (compiling
every shape the timed run meets: the same seed gives the same rows); transformers gets one untimed batch.
Greedy setting: a random 128-token prompt (x batch), --greedy-new-tokens new tokens that never stop early,
decode tokens/s of sampler.generate vs transformers generate (prefill included in both).
All deft_jax settings run before transformers is imported (its thread pool then cannot slow them).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import jax
import numpy as np

from deft_jax.evaluation import suites
from deft_jax.inference import sampler as S
from deft_jax.model import tokenizer as tokenizer_lib
from deft_jax.model import weights

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def delivered(tokens: np.ndarray, *, prompt_len: int, stop_ids, pad_id: int | None = None) -> int:
    """Delivered tokens of transformers' output rows [B, prompt_len + new]: per row, the new tokens up to
    and including its first stop token (all of them when it has none)."""
    total = 0
    for row in np.asarray(tokens)[:, prompt_len:]:
        hits = np.flatnonzero(np.isin(row, list(stop_ids)))
        total += int(hits[0]) + 1 if len(hits) else len(row)
    return total


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return (f"{cpu}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, jax {jax.__version__} on "
            f"{jax.devices()[0].platform}")


def math_requests(tokenizer, *, data_dir, count: int) -> list[S.Request]:
    benchmark = suites.select_benchmarks("math", ["math500"])[0]
    problems = suites.load_problems(benchmark, data_dir=data_dir, num_eval=count)
    template = suites.TEMPLATES[benchmark.template]
    return [S.Request(p.prompt_id, tuple(tokenizer.encode(template(p.question, tokenizer)))) for p in problems]


def run_sampler(params, config, tokenizer, requests, *, options, stops) -> dict:
    """Untimed pass (compilation), then the timed pass; delivered tokens, seconds, tokens/s."""
    def once():
        timing = S.Timing()
        start = time.perf_counter()
        samples = [s for batch in S.sample(params, config, requests, options=options, stops=stops,
                                           decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                                           pad_id=tokenizer.pad_id, progress=False, timing=timing)
                   for s in batch]
        return samples, time.perf_counter() - start, timing

    once()
    samples, seconds, timing = once()
    tokens = sum(s.num_tokens for s in samples)
    lengths = sorted(s.num_tokens for s in samples)
    return {"delivered_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "prefill_seconds": timing.prefill_seconds, "decode_seconds": timing.decode_seconds,
            "prefills": timing.prefills, "refilled_slots": timing.refilled_slots,
            "sample_lengths": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}}


def run_greedy(params, config, *, batch: int, prompt_len: int, new_tokens: int) -> tuple[dict, list]:
    prompts = [np.random.default_rng(0).integers(3, config.vocab_size, size=prompt_len).tolist()] * batch
    options = S.SamplerOptions(sampling=S.SamplingConfig(max_new_tokens=new_tokens), chunk_steps=new_tokens)
    stops = S.StopCriteria(token_ids=(config.vocab_size,))  # never produced: every row runs to new_tokens

    def once():
        start = time.perf_counter()
        S.generate(params, config, prompts, stops=stops, pad_id=0, options=options)
        return time.perf_counter() - start

    once()
    seconds = once()
    return {"seconds": seconds, "tokens_per_second": batch * new_tokens / seconds}, prompts


def hf_model(params, config, tokenizer):
    import torch
    import transformers

    directory = tempfile.mkdtemp(prefix="bench_continuous_hf_")
    weights.export_hf(params, config, tokenizer, directory, dtype="float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.pad_id
    return model


def hf_sampled(model, requests, *, n: int, rows: int, max_new_tokens: int, stop_ids, pad_id: int,
               seed: int) -> dict:
    import torch

    prompts = [list(r.tokens) for r in sorted(requests, key=lambda r: (len(r.tokens), r.prompt_id))
               for _ in range(n)]

    def batch(part):
        length = max(len(p) for p in part)
        ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in part])
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in part])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids),
                                 pad_token_id=pad_id)
        return delivered(out.numpy(), prompt_len=length, stop_ids=stop_ids)

    torch.manual_seed(seed)
    batch(prompts[:rows])  # warm-up
    start = time.perf_counter()
    tokens = sum(batch(prompts[i:i + rows]) for i in range(0, len(prompts), rows))
    seconds = time.perf_counter() - start
    return {"delivered_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def hf_greedy(model, prompts, *, new_tokens: int) -> dict:
    import torch

    ids = torch.tensor(prompts)

    def once():
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        return time.perf_counter() - start

    once()
    seconds = once()
    return {"seconds": seconds, "tokens_per_second": len(prompts) * new_tokens / seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder with math500_test.jsonl")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--slots", type=int, default=16, help="decode slots (continuous) = rows per batch (others)")
    parser.add_argument("--chunk-steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy-batch", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--greedy-prompt-len", type=int, default=128)
    parser.add_argument("--greedy-new-tokens", type=int, default=64)
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers rows")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    result = {"machine": machine(), "settings": vars(args)}
    print(f"machine: {result['machine']}", flush=True)
    config, params = weights.load_pretrained(args.model)
    tokenizer = tokenizer_lib.load_tokenizer(args.model)
    requests = math_requests(tokenizer, data_dir=args.data_dir, count=args.num_prompts)
    stops = S.stop_criteria(tokenizer)
    sampling = S.SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)
    sampled = {}
    for batching in ("continuous", "static"):
        options = S.SamplerOptions(n=args.n, sampling=sampling, seed=args.seed, max_rows=args.slots,
                                   slots=args.slots, chunk_steps=args.chunk_steps, batching=batching)
        sampled[batching] = run_sampler(params, config, tokenizer, requests, options=options, stops=stops)
        print(f"{batching}: {sampled[batching]}", flush=True)
    greedy, greedy_prompts = {}, {}
    for batch in args.greedy_batch:
        greedy[f"batch {batch}"], greedy_prompts[batch] = run_greedy(
            params, config, batch=batch, prompt_len=args.greedy_prompt_len, new_tokens=args.greedy_new_tokens)
        greedy[f"batch {batch}"] = {"deft_jax": greedy[f"batch {batch}"]}
    if not args.no_transformers:
        model = hf_model(params, config, tokenizer)
        sampled["transformers"] = hf_sampled(model, requests, n=args.n, rows=args.slots,
                                             max_new_tokens=args.max_new_tokens, stop_ids=stops.token_ids,
                                             pad_id=tokenizer.pad_id, seed=args.seed)
        print(f"transformers: {sampled['transformers']}", flush=True)
        for batch in args.greedy_batch:
            greedy[f"batch {batch}"]["transformers"] = hf_greedy(model, greedy_prompts[batch],
                                                                 new_tokens=args.greedy_new_tokens)
    ratios = {"continuous / static": sampled["continuous"]["tokens_per_second"] /
              sampled["static"]["tokens_per_second"]}
    if "transformers" in sampled:
        ratios["continuous / transformers"] = (sampled["continuous"]["tokens_per_second"] /
                                               sampled["transformers"]["tokens_per_second"])
        for name, row in greedy.items():
            ratios[f"greedy {name}: deft_jax / transformers"] = (row["deft_jax"]["tokens_per_second"] /
                                                                 row["transformers"]["tokens_per_second"])
    result.update(sampled=sampled, greedy=greedy, ratios=ratios, load_average_after=os.getloadavg()[0])
    print("\n| setting | delivered tokens | seconds | tokens/s |\n|---|---|---|---|")
    for name, row in sampled.items():
        print(f"| sampled, {name} | {row['delivered_tokens']} | {row['seconds']:.1f} | {row['tokens_per_second']:.1f} |")
    for name, row in greedy.items():
        for who, figures in row.items():
            print(f"| greedy {name}, {who} | | {figures['seconds']:.2f} | {figures['tokens_per_second']:.1f} |")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
