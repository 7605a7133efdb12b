"""Training metrics on the host: progress lines show a rate only once there is one; replayed steps are dropped
from metrics.jsonl; the TensorBoard writer does not import torch."""

import json
import os


def test_progress_lines_show_a_rate_only_once_there_is_one(capsys):
    from deft_jax.training import metrics as metrics_lib

    progress = metrics_lib.Progress(total=10, initial=0, enabled=True, mode="lines")
    progress.update(step=1, scalars={"train/loss": 2.0})
    first = capsys.readouterr().err
    assert first.startswith("step 1/10 | loss=2") and "nan" not in first and "ETA" not in first
    progress.update(step=3, scalars={"train/loss": 1.0})
    later = capsys.readouterr().err
    assert "steps/s" in later and "ETA 00:00" in later and "nan" not in later


def test_replayed_steps_are_dropped_from_metrics_jsonl(tmp_path):
    from deft_jax.training import metrics as metrics_lib

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train/loss": float(s)}) + "\n" for s in (1, 2, 3, 4)))
    writer = metrics_lib.MetricWriter(workdir=tmp_path, enabled=True, tensorboard=False, resume_step=2)
    writer.write(step=3, scalars={"train/loss": 30.0})
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def _events(directory):
    """Every Event record of the TFRecord event files under `directory` (length-prefixed protobufs)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12:offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


_WRITE_WITHOUT_TORCH = """
import json, sys
from deft_jax import train  # noqa: F401  (the trainer's CLI module)
from deft_jax.training import loop  # noqa: F401
from deft_jax.evaluation import before_after  # noqa: F401
from deft_jax.training import metrics
writer = metrics.MetricWriter(workdir=sys.argv[1], enabled=True, tensorboard=True)
writer.write(step=3, scalars={"train/loss": 2.5}, histograms={"train/alpha": ([0.0, 0.5, 1.0], [1.0, 3.0])})
writer.close()
imported = "torch" in sys.modules
import torch  # noqa: F401  (hidden only while tensorboardX was imported)
print(json.dumps({"torch_imported_by_the_trainer": imported, "torch_importable_after": "torch" in sys.modules}))
"""


def test_the_trainer_and_its_tensorboard_writer_do_not_import_torch(tmp_path):
    """tensorboardX imports torch when installed (~0.2 GiB resident); the trainer's writer hides it, and the
    event file still holds the scalar and the histogram."""
    import importlib.util
    import subprocess
    import sys

    import pytest

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: nothing could import it")
    result = subprocess.run([sys.executable, "-c", _WRITE_WITHOUT_TORCH, str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"torch_imported_by_the_trainer": False,
                                                                   "torch_importable_after": True}
    values = {(value.tag, event.step): value for event in _events(tmp_path / "tensorboard")
              for value in event.summary.value}
    assert values[("train/loss", 3)].simple_value == 2.5
    histogram = values[("train/alpha", 3)].histo
    assert (histogram.num, list(histogram.bucket)) == (4.0, [1.0, 3.0])
