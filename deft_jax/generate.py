"""Batched generation with a KV cache under jax.jit: greedy or temperature / top-p sampling.

    python -m deft_jax.generate --model smollm2-135m-instruct --prompt "What is 2+2?"

Chat formatting is on by default when the checkpoint carries its own chat template (instruct models);
--no-chat feeds the raw prompt. Generation stops at the tokenizer's EOS or after --max-new-tokens. The
command line of the engine `deft_jax.inference.sampler`: flags in, one library call.
"""
from __future__ import annotations

import sys
import time

from deft_jax import cli
from deft_jax.inference import sampler
from deft_jax.model import tokenizer as tokenizer_lib
from deft_jax.model import weights


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="python -m deft_jax.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="'smollm2-135m-instruct', a .gguf file or a Hugging Face directory")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system", default=None, help="system message (chat mode)")
    chat = parser.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="feed the raw prompt")
    parser.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
    return parser.parse_args(argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    options = sampler.SamplerOptions(seed=args.seed, sampling=sampler.SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p))
    start = time.perf_counter()
    config, params = weights.load_pretrained(args.model, param_dtype=args.param_dtype)
    tokenizer = tokenizer_lib.load_tokenizer(args.model)
    loaded = time.perf_counter() - start
    chat = tokenizer_lib.chat_by_default(tokenizer) if args.chat is None else args.chat
    prompts = [tokenizer.encode(tokenizer_lib.format_prompt(tokenizer, p, chat=chat, system=args.system))
               for p in args.prompt]
    timing = sampler.Timing()
    samples = sampler.generate(params, config, prompts, stops=sampler.StopCriteria(token_ids=(tokenizer.eos_id,)),
                               pad_id=tokenizer.pad_id, options=options, timing=timing,
                               decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    texts = [s.text for s in samples]
    for prompt, text in zip(args.prompt, texts):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text)
    print(f"[{args.model}: loaded in {loaded:.1f}s; chat={chat}; {sum(map(len, prompts))} prompt tokens in "
          f"{timing.prefill_seconds:.2f}s, {sum(s.num_tokens for s in samples)} new tokens in "
          f"{timing.decode_seconds:.2f}s (first calls include compilation)]", file=sys.stderr)
    return texts


if __name__ == "__main__":
    cli.run("generate", main)
