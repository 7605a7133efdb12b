"""One call on a GPU: train-step tokens/s and MFU, decode tokens/s, and logits parity with the CPU, as a table.

    pip install -e .[gpu]                       # jax's CUDA 12 wheels at the project's jax pin
    python experiments/gpu_check.py             # a Llama-3.2-1B-class model in bf16, cuDNN attention
    python experiments/gpu_check.py --tiny      # the same program on a tiny model (runs on CPU; tests)

The architecture is Llama-3.2-1B's (16 layers, d 2048, 32 heads / 8 kv heads of 64, d_ff 8192, vocab
128256, tied embeddings, Llama-3 RoPE) from config values; the weights are random N(0, 0.02) in float32
with bf16 compute, the batch random tokens (nothing depends on data or downloads).

  train   the trainer's own step (train_step: NLL, AdamW, clip) jitted with donated state, `--steps` timed
          steps after one warm step; tokens/s = rows x T / median step; MFU = model.flops_per_token x
          tokens/s / peak (peak from --peak_tflops, else by device kind).
  decode  the engine's prefill + one decode chunk (greedy, KV cache) of --new_tokens tokens for --decode_rows prompts;
          tokens/s = rows x new tokens / decode seconds.
  parity  the same params (float32 compute) on one row: logits on the default device vs on the CPU,
          max |difference| and max |logits|; and the attention kernel chosen ('auto') vs the einsum.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from deft_jax import objectives  # noqa: E402
from deft_jax.inference import sampler  # noqa: E402
from deft_jax.model import attention as attention_lib  # noqa: E402
from deft_jax.model import decoder as model_lib  # noqa: E402
from deft_jax.training import step as step_lib  # noqa: E402

LLAMA_1B = dict(model_type="llama", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                head_dim=64, d_ff=8192, rope_theta=500000.0, tie_embeddings=True, max_position_embeddings=131072,
                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
TINY = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "B200": 2250.0}  # dense bf16


def model_config(*, tiny: bool, dtype: str) -> model_lib.ModelConfig:
    fields = TINY if tiny else LLAMA_1B
    return model_lib.ModelConfig(**fields, dtype=dtype, param_dtype="float32", attention="auto")


def peak_flops(device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    kind = getattr(device, "device_kind", "")
    return next((tflops * 1e12 for name, tflops in PEAK_TFLOPS.items() if name in kind), None)


def random_batch(*, rows: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, seq_len + 1))
    mask = np.zeros((rows, seq_len), np.float32)
    mask[:, seq_len // 2:] = 1.0  # the second half supervised, as a completion
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
            "loss_mask": mask, "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)),
            "segment_ids": np.ones((rows, seq_len), np.int32)}


def measure_train(config, params, *, rows: int, seq_len: int, steps: int) -> dict:
    optimizer = step_lib.make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01)
    loss = step_lib.LossSpec(model_config=config, objective=objectives.parse_objective("nll"))
    spec = step_lib.StepSpec(loss=loss, optimizer=optimizer)
    state = step_lib.new_state(jax.tree.map(jnp.copy, params), optimizer=optimizer, seed=0)  # donated
    schedule = {k: jnp.asarray(v) for k, v in step_lib.Schedule(lr=1e-5, total_steps=1000).as_arrays().items()}
    batch = {k: jnp.asarray(v) for k, v in random_batch(rows=rows, seq_len=seq_len, vocab=config.vocab_size).items()}
    step = jax.jit(lambda s, b, sc: step_lib.train_step(s, b, sc, spec=spec), donate_argnums=0)
    start = time.perf_counter()
    state, metrics = step(state, batch, schedule)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch, schedule)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = rows * seq_len
    return {"compile_seconds": compile_seconds, "step_seconds": seconds, "tokens_per_second": tokens / seconds,
            "flops_per_token": model_lib.flops_per_token(config, seq_len=seq_len),
            "loss": float(metrics["train/loss"])}


def measure_decode(config, params, *, rows: int, prompt_len: int, new_tokens: int) -> dict:
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (rows, prompt_len)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (rows, prompt_len))
    segments = jnp.ones((rows, prompt_len), jnp.int32)
    max_len = prompt_len + new_tokens
    stop = (config.vocab_size,)  # an id no token has: every row decodes all new_tokens steps

    def run():
        logits, cache = sampler.prefill(params, tokens, positions, segments, config=config, max_len=max_len)
        jax.block_until_ready(logits)
        start = time.perf_counter()
        keys = sampler.row_keys(seed=0, prompt_ids=list(range(rows)), sample_indices=[0] * rows)
        out, _, _, _, _, taken = sampler.decode_chunk(
            params, logits, cache, positions[:, -1] + 1, jnp.zeros((rows,), bool), keys, jnp.int32(0),
            jnp.int32(new_tokens), jnp.int32(rows), config=config, steps=new_tokens, kv_len=max_len, stop_ids=stop, pad_id=0,
            temperature=0.0, top_p=1.0)
        jax.block_until_ready(out)
        return time.perf_counter() - start, int(taken)

    run()  # compile
    seconds, steps = run()
    return {"decode_seconds": seconds, "steps": steps, "tokens_per_second": rows * steps / seconds}


def logits_parity(config, params, *, seq_len: int) -> dict:
    """float32 logits of one row on the default device vs the CPU, and the chosen kernel vs the einsum."""
    exact = config.replace(dtype="float32")
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, config.vocab_size, (1, seq_len)), jnp.int32)
    forward = jax.jit(lambda p, t, c: model_lib.forward(p, c, t), static_argnums=2)
    here = np.asarray(forward(params, tokens, exact))
    einsum = np.asarray(forward(params, tokens, exact.replace(attention="xla")))
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        on_cpu = np.asarray(forward(jax.device_put(params, cpu), jax.device_put(tokens, cpu),
                                    exact.replace(attention="xla")))
    return {"max_abs_logit": float(np.abs(on_cpu).max()), "device_vs_cpu": float(np.abs(here - on_cpu).max()),
            "kernel_vs_einsum": float(np.abs(here - einsum).max())}


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and shapes (runs on CPU in seconds)")
    parser.add_argument("--rows", type=int, default=None, help="train rows per step (default 8; tiny 2)")
    parser.add_argument("--seq_len", type=int, default=None, help="train row length (default 2048; tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed train steps (default 10; tiny 2)")
    parser.add_argument("--decode_rows", type=int, default=None, help="decode prompts (default 32; tiny 2)")
    parser.add_argument("--prompt_len", type=int, default=None, help="decode prompt length (default 512; tiny 8)")
    parser.add_argument("--new_tokens", type=int, default=None, help="decoded tokens (default 256; tiny 4)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak bf16 TFLOP/s (default by kind)")
    args = parser.parse_args(argv)
    small = args.tiny
    pick = lambda value, big, tiny: value if value is not None else (tiny if small else big)  # noqa: E731
    rows, seq_len, steps = pick(args.rows, 8, 2), pick(args.seq_len, 2048, 64), pick(args.steps, 10, 2)
    decode_rows, prompt_len = pick(args.decode_rows, 32, 2), pick(args.prompt_len, 512, 8)
    new_tokens = pick(args.new_tokens, 256, 4)

    device = jax.devices()[0]
    config = model_config(tiny=small, dtype="bfloat16")
    params = model_lib.init_params(config, rng=jax.random.key(0))
    chosen = attention_lib.resolve(config.attention_spec, platform=device.platform, seq_len=seq_len)
    train = measure_train(config, params, rows=rows, seq_len=seq_len, steps=steps)
    decode = measure_decode(config, params, rows=decode_rows, prompt_len=prompt_len, new_tokens=new_tokens)
    parity = logits_parity(config, params, seq_len=min(seq_len, 256))
    peak = peak_flops(device, args.peak_tflops)
    mfu = None if peak is None else train["flops_per_token"] * train["tokens_per_second"] / peak
    result = {"device": f"{device.platform} {getattr(device, 'device_kind', '')}", "attention": chosen,
              "params": model_lib.count_params(params), "train": train, "decode": decode, "parity": parity,
              "mfu": mfu, "shapes": dict(rows=rows, seq_len=seq_len, decode_rows=decode_rows,
                                         prompt_len=prompt_len, new_tokens=new_tokens)}
    print(table([
        ("device", result["device"]),
        ("model", f"{result['params'] / 1e9:.2f}B params, bf16 compute, attention {chosen}"),
        ("train", f"{rows} x {seq_len} tokens: {train['step_seconds'] * 1e3:.1f} ms/step, "
                  f"{train['tokens_per_second']:,.0f} tokens/s (compile {train['compile_seconds']:.1f} s)"),
        ("MFU", "unknown peak (pass --peak_tflops)" if mfu is None else f"{100 * mfu:.1f}% of {peak / 1e12:.0f} TFLOP/s"),
        ("decode", f"{decode_rows} rows x {decode['steps']} tokens after {prompt_len}: "
                   f"{decode['tokens_per_second']:,.0f} tokens/s"),
        ("parity", f"float32 logits vs CPU: max |diff| {parity['device_vs_cpu']:.2e} (max |logit| "
                   f"{parity['max_abs_logit']:.2f}); {chosen} vs einsum {parity['kernel_vs_einsum']:.2e}"),
    ]))
    return result


if __name__ == "__main__":
    main()
