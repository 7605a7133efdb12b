"""deft_jax: token-level SFT objectives (NLL ... DEFT) in JAX/Flax."""
import setuptools

# Pins: jax, jaxlib, flax and orbax-checkpoint move together. These versions resolve without conflicts
# on Python 3.11; newer jax releases have broken older flax and orbax before, so bump
# all of them at once, and only after the test suite passes on the new set. On a GPU image that ships
# its own JAX, install with `pip install --no-deps -e .` and the project runs on what is present.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore>=0.1.60",  # orbax's storage layer; read directly to check a checkpoint's index
    "ml-collections>=1.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    # Models and tokenizers.
    "safetensors>=0.4",
    "gguf>=0.17",
    "tokenizers>=0.20",
    "jinja2>=3.1",
    # Data.
    "grain==0.2.18",
    "tensorflow-datasets>=4.9.9",
    "array-record>=0.8",
    "pyarrow>=15",
    "reasoning-gym>=0.1.25",
    "pyfiglet>=1.0",
    # Logging, evaluation, plots.
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "math-verify>=0.8",
    "rapidfuzz>=3.0",  # Jaro-Winkler (FigFont scoring)
    "matplotlib>=3.8",
]

# libtpu describes TPU slices to JAX, so `python -m deft_jax.compile` compiles for them on any machine
# (no TPU needed). 0.0.42.1 is the libtpu that jax[tpu]==0.10.2 pairs with; move it with the jax pin.
TPU = ["libtpu==0.0.42.1"]

# jax's CUDA 12 wheels (plugin, PJRT and the NVIDIA libraries) at the jax pin; move it with the pin.
GPU = ["jax[cuda12]==0.10.2"]

TEST = TPU + [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "filelock>=3.12",  # JAX's compilation-cache lock and the shared smoke run (tests/conftest.py)
    "jellyfish>=1.0",  # independent Jaro-Winkler reference for the scoring tests
    # Independent reference implementation for logits parity (torch 2.13.0 CPU lies on these machines).
    "torch==2.13.0",
    "transformers>=4.56",
    "accelerate>=1.0",
]

setuptools.setup(
    name="deft_jax",
    version="0.1.0",
    description="Token-level SFT objectives (NLL, -p, Tsallis, DFT, EAFT, Cayley, DEFT) in JAX/Flax.",
    packages=setuptools.find_packages(include=["deft_jax", "deft_jax.*", "configs", "configs.*"]),
    package_data={"deft_jax.evaluation": ["continuum_evidence.json"]},  # the probe's evidence
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"test": TEST, "tpu": TPU, "gpu": GPU, "bench": ["torch==2.13.0", "transformers>=4.56", "accelerate>=1.0"]},
)
