"""Training metrics on the host: progress lines show a rate only once there is one; replayed steps are dropped
from metrics.jsonl."""

import json


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
