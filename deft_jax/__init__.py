"""deft_jax: token-level supervised fine-tuning objectives (NLL ... DEFT) in JAX/Flax."""

__version__ = "0.1.0"
