"""Batched generation with a KV cache under jax.jit: greedy or temperature / top-p sampling.

The command line of `deft_jax.inference.generation`: flags in, one library call.
"""
from __future__ import annotations

import sys
import time

import jax

from deft_jax import cli
from deft_jax.inference.generation import (
    SamplingConfig,
    chat_by_default,
    format_prompt,
    generate,
)
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
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    start = time.perf_counter()
    config, params = weights.load_pretrained(args.model, param_dtype=args.param_dtype)
    tokenizer = tokenizer_lib.load_tokenizer(args.model)
    loaded = time.perf_counter() - start
    chat = chat_by_default(tokenizer) if args.chat is None else args.chat
    prompts = [tokenizer.encode(format_prompt(tokenizer, p, chat=chat, system=args.system)) for p in args.prompt]
    result = generate(params, config, prompts, stop_ids=[tokenizer.eos_id], sampling=sampling,
                      pad_id=tokenizer.pad_id, rng=jax.random.key(args.seed))
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in result.tokens]
    for prompt, text in zip(args.prompt, texts):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text)
    print(f"[{args.model}: loaded in {loaded:.1f}s; chat={chat}; {result.prompt_tokens} prompt tokens in "
          f"{result.prefill_seconds:.2f}s, {result.generated_tokens} new tokens in {result.decode_seconds:.2f}s "
          "(first calls include compilation)]", file=sys.stderr)
    return texts


if __name__ == "__main__":
    cli.run("generate", main)
