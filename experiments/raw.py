"""Raw output of the experiment scripts: one JSON file per run, with the settings and the machine beside the figures.

    payload = raw.record(script="bench_data", settings=vars(args), figures={...})
    raw.write(path, payload)          # what every script's --json PATH does

The record names the machine (``platform.processor()``, the CPU model from /proc/cpuinfo, ``os.cpu_count()``,
the 1/5/15-minute load average at the end of the run) and the software (jax, jaxlib, Python), so a timing
can be read against the load it was taken under. experiments/tables.py renders the published tables from
these files.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
from collections.abc import Mapping


def cpu_model() -> str:
    """The first `model name` of /proc/cpuinfo ('' where there is none)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> dict:
    """Where and under what load the figures were taken."""
    import jax

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    return {"processor": platform.processor(), "cpu_model": cpu_model(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": load, "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib_version,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


def record(*, script: str, settings: Mapping, figures, machine_info: Mapping | None = None) -> dict:
    """{script, settings, figures, machine, written}: the JSON every script's --json writes."""
    return {"script": script, "settings": dict(settings), "figures": figures,
            "machine": dict(machine_info) if machine_info is not None else machine(),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write(path: str | os.PathLike, payload: Mapping) -> pathlib.Path:
    """Write `payload` as indented, key-sorted JSON (NaN as null is not needed: figures are finite or None)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=_plain) + "\n")
    return path


def read(path: str | os.PathLike) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def _plain(value):
    """NumPy scalars and arrays, paths: as JSON's own types."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
