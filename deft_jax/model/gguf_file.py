"""Opening a GGUF file with one clear error for a missing, truncated or foreign file.

The weights loader and the tokenizer both read GGUF files; both open them here, so a truncated download
fails with the file's name and what to do, never with gguf's own IndexError or ValueError.
"""
from __future__ import annotations

import pathlib

from deft_jax import errors
from deft_jax.model import ModelError


def open_gguf(path: str | pathlib.Path):
    """gguf.GGUFReader with clear errors for a missing, truncated or foreign file."""
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise errors.MissingPathError(f"{path}: GGUF file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated "
                         "or not GGUF at all") from e
    file_size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > file_size or tensor.data.nbytes != int(tensor.n_bytes):
            raise ModelError(f"{path}: tensor {tensor.name!r} needs bytes up to {end} but the file has "
                             f"{file_size}; the file is truncated, download it again")
    return reader
