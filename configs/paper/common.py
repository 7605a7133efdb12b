"""The paper's training protocol (official code, luludus/DEFT) for one base model in one regime.

Every paper config is `paper_config(arg, preset=..., lr=..., plans=...)`; its arguments (comma-separated
after the file name) are:
    regime=<name>      math | medical | figfont (default: the file's)
    objective=<name>   nll | prob | dft | eaft | cayley | deft | ... or an alias such as GeneralFamily-0.5
                       (default deft): every ablation is one command
    model_path=<dir>   the checkpoint (Hugging Face dir or .gguf) to fine-tune; default: the architecture
                       preset only (enough for `deft_jax.compile` and model.init=random)
    data_path=<file>   training file (math: the NuminaMath-CoT subset; medical: m23k, with the distilled
                       answer as the response); eval_path=<file> a separate evaluation file
    impl=<name>        chunked (default: the fused head, same numbers, no [tokens, vocab] logits) | naive
    topology=<name>    the slice the mesh and micro-batches are planned for (default: the file's)
Protocol: one epoch, global batch 256, AdamW (0.9, 0.95), lr 5e-5 (2e-5 for Llama-3.1-8B), weight decay
0.01 (1e-5 FigFont), grad-norm clip 1.0, cosine schedule with 10% warmup, bf16 compute with float32 master
weights and optimizer state, gradient checkpointing (remat), max length 3072 (math) or 800 (medical,
FigFont) with right truncation, loss on the response and EOS only.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from configs import base
from deft_jax.training import config as config_lib

REGIMES = ("math", "medical", "figfont")
MAX_LENGTH = {"math": 3072, "medical": 800, "figfont": 800}
WEIGHT_DECAY = {"math": 0.01, "medical": 0.01, "figfont": 1e-5}
DEFAULT_DATA_PATH = {"math": "data/numinamath_cot_subset.jsonl", "medical": "data/m23k.jsonl"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a run is laid out on a slice (chosen from `python -m deft_jax.compile` reports)."""

    fsdp: int  # parameters and optimizer state sharded over this many chips
    micro_batch_size: int  # global rows per micro-batch (256 / micro_batch_size micro-batches)
    data: int = 1
    tensor: int = 1
    remat_policy: str = "full"  # deft_jax.model.remat.POLICIES other than 'none' (the paper checkpoints)
    attention: str = "auto"  # splash on TPU (deft_jax.model.attention)


def regime_data(config: ml_collections.ConfigDict, *, regime: str, data_path: str, eval_path: str) -> None:
    """config.data for one regime: the task, its files and the paper's lengths."""
    data = config.data
    data.max_length = MAX_LENGTH[regime]
    data.truncation = "truncate"  # right truncation, as the official code
    if regime == "figfont":  # reasoning-gym figlet_font, seed 42, items 0-39,999 / 40,000-44,999: the defaults
        data.task = "figfont"
        return
    data.task = "math" if regime == "math" else "jsonl"
    data.path = data_path or DEFAULT_DATA_PATH[regime]
    data.eval_path = eval_path


def paper_config(arg: str | None, *, preset: str, lr: float, default_regime: str,
                 plans: dict[str, dict[str, Plan]], default_topology: str) -> ml_collections.ConfigDict:
    """The validated, locked config of one paper run (see the module docstring for `arg`)."""
    parsed = base.parse_arg(arg, regime=default_regime, objective="deft", model_path="", eval_path="",
                            impl="chunked", topology=default_topology)
    if parsed.regime not in REGIMES:
        raise config_lib.ConfigError(f"config argument regime={parsed.regime!r} is not one of {REGIMES}")
    if parsed.runlocal or parsed.smoke or parsed.model or parsed.task:
        raise config_lib.ConfigError("paper configs take regime=, objective=, model_path=, data_path=, eval_path=, impl=, "
                         "topology= (runlocal, smoke, model= and task= belong to the small configs)")
    regime_kind = "math" if parsed.regime == "math" else "short"
    available = plans[regime_kind]
    if parsed.topology not in available:
        raise config_lib.ConfigError(f"config argument topology={parsed.topology!r}: this config is planned for "
                         f"{sorted(available)}; compile another with deft_jax.compile and --config.mesh.* / "
                         f"--config.micro_batch_size")
    plan = available[parsed.topology]

    config = base.get_base_config(base.parse_arg(None))
    config.model.name = parsed.model_path or preset
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.remat = True
    config.model.remat_policy = plan.remat_policy
    config.model.attention = plan.attention
    regime_data(config, regime=parsed.regime, data_path=parsed.data_path, eval_path=parsed.eval_path)
    config.loss.impl = parsed.impl
    config.batch_size = 256
    config.micro_batch_size = plan.micro_batch_size
    config.num_epochs = 1.0
    config.optim.lr = lr
    config.optim.weight_decay = WEIGHT_DECAY[parsed.regime]
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = plan.data, plan.fsdp, plan.tensor
    config.checkpoint.every_steps = 100
    base.set_objective(config, parsed.objective)
    return base.finalize(config)
