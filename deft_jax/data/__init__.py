"""The SFT data pipeline: sources -> Examples -> tokens + loss mask -> padded/packed batches.

    cfg = default_data_config()                        # config.data; validate_data_config(cfg)
    train = load_examples(cfg, split="train")           # list[Example]
    tokenized, report = tokenize_examples(train, tokenizer=tok, cfg=cfg)
    batches = train_iterator_from_config(tokenized, cfg=cfg, batch_size=B,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count(), state=saved_or_None)
    batch = next(batches); state = batches.get_state()  # JSON dict, save it with the checkpoint

Batch convention (numpy, shape [B, T]; B = this process's rows):
    inputs       int32   token ids fed to the model
    targets      int32   the next-token ids (inputs shifted by one *within each example*)
    loss_mask    float32 1.0 where targets[b, i] is a response token or the EOS, else 0.0
    positions    int32   position within its segment, restarting at 0 for each example
    segment_ids  int32   1, 2, ... per example in the row; 0 = padding
For an example with tokens t[0..n-1] (chat-templated prompt + response + EOS): inputs = t[:-1],
targets = t[1:], loss_mask[i] = 1 iff targets[i] is a response token or the EOS (no prompt token).
Evaluation batches (make_eval_batches) add "weights" [B] float32 (1.0 real row, 0.0 padding row)
and "example_index" [B] int32 (-1 for padding rows).
"""
from deft_jax.data.config import default_data_config, row_length, validate_data_config
from deft_jax.data.formatting import (
    GenerationPrompt,
    TokenizerLike,
    TruncationReport,
    check_token_range,
    make_generation_prompts,
    tokenize_examples,
)
from deft_jax.data.loader import (
    TrainIterator,
    make_eval_batches,
    make_train_iterator,
    train_iterator_from_config,
)
from deft_jax.data.noise import NoiseReport, corrupted_indices, inject_label_noise
from deft_jax.data.packing import BATCH_KEYS, packing_efficiency
from deft_jax.data.records import DataError, Example, TokenizedExample
from deft_jax.data.tasks import FIGFONT_SYSTEM_PROMPT, load_examples

__all__ = [
    "BATCH_KEYS",
    "DataError",
    "Example",
    "FIGFONT_SYSTEM_PROMPT",
    "GenerationPrompt",
    "NoiseReport",
    "TokenizedExample",
    "TokenizerLike",
    "TrainIterator",
    "TruncationReport",
    "check_token_range",
    "corrupted_indices",
    "default_data_config",
    "inject_label_noise",
    "load_examples",
    "make_eval_batches",
    "make_generation_prompts",
    "make_train_iterator",
    "packing_efficiency",
    "row_length",
    "tokenize_examples",
    "train_iterator_from_config",
    "validate_data_config",
]
