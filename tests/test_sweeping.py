"""deft_jax.sweep: 3 tiny runs, SIGKILL in the middle and a relaunch that finishes without retraining the
finished run; summary table/CSV/plot; cluster commands; bad sweep input."""

from __future__ import annotations
import json
import pytest
from deft_jax.training import config as config_lib
from deft_jax import sweeping as sweep


def test_run_names():
    assert sweep.run_names([{"objective.alpha": 0.1}, {"objective.alpha": 10.0}]) == ["alpha=0.1", "alpha=10.0"]
    assert sweep.run_names([{"a.x": 1, "b": "s/t"}]) == ["x=1,b=s_t"]
    assert sweep.run_names([{"a.x": 1}, {"b.x": 1}]) == ["a.x=1", "b.x=1"]  # short names collide
    with pytest.raises(sweep.SweepError, match="repeated points"):
        sweep.run_names([{"seed": 1}, {"seed": 1}])


def test_bad_sweep_input(tmp_path):
    from configs import deformed_log

    config = deformed_log.get_config("smoke")
    with pytest.raises(sweep.SweepError, match=r"config.objective.alfa=0.5: 'alfa' is not a known field \(did you mean 'alpha'\?\)"):
        sweep.apply_point(config, {"objective.alfa": 0.5})
    with pytest.raises(sweep.SweepError, match="objective.alpha"):
        sweep.apply_point(config, {"objective.alpha": -1.0})  # out of range: the trainer's validation
    no_sweep = tmp_path / "no_sweep.py"
    no_sweep.write_text("def get_config(arg=None):\n    return None\n")
    with pytest.raises(sweep.SweepError, match="has no sweep"):
        sweep.sweep_points(config_lib.load_config_module(no_sweep), source=str(no_sweep))
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.load_config_module(tmp_path / "missing.py")
    # A relaunch with other settings must not silently reuse (skip or resume) the runs of the first launch.
    (run,) = sweep.plan_runs(config=config, config_arg="configs/deformed_log.py:smoke", overrides={},
                             workdir=tmp_path / "w", points=[{"objective.alpha": 0.5}])
    sweep.write_run_files(run)
    sweep.check_same_config(run)
    changed = deformed_log.get_config("smoke")
    changed.total_steps = 7
    (rerun,) = sweep.plan_runs(config=changed, config_arg="configs/deformed_log.py:smoke", overrides={"total_steps": 7},
                               workdir=tmp_path / "w", points=[{"objective.alpha": 0.5}])
    with pytest.raises(sweep.SweepError, match=r"another config \(fields differing: \['total_steps'\]\)"):
        sweep.check_same_config(rerun)
    # A run started before the project added a field is the same config while the sweep leaves it at its
    # default (the run was trained with that behaviour), and another config once the sweep sets it.
    point_file = run.workdir / sweep.POINT_FILE
    stored = json.loads(point_file.read_text())
    del stored["config"]["distributed"]["heartbeat_timeout_seconds"]
    point_file.write_text(json.dumps(stored))
    sweep.check_same_config(run)
    stored["config"]["distributed"]["heartbeat_timeout_seconds"] = 5
    point_file.write_text(json.dumps(stored))
    with pytest.raises(sweep.SweepError, match="distributed.heartbeat_timeout_seconds"):
        sweep.check_same_config(run)


def test_only_done_and_skipped_runs_count_as_finished():
    statuses = {"a": "done", "b": "skipped (done)", "c": "failed: boom (traceback in c/error.txt)",
                "d": "interrupted: SIGTERM"}
    assert sweep.unfinished(statuses) == ["c", "d"]
    assert sweep.unfinished({"a": "done"}) == []
