"""The compile table is recomputed from its rows' JSON alone; compiled or claimed rows are not compiled again."""
import json
import pathlib
import subprocess
import sys

from experiments import compile_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = [compile_table.row("llama8b", "llama_3_1_8b", "math", "v5p-32", "splash", "full"),
        compile_table.row("llama8b", "llama_3_1_8b", "math", "v5e-16", "xla", "none", "--config.mesh.fsdp=16"),
        compile_table.row("llama8b", "llama_3_1_8b", "figfont", "v5p-32", "xla", "minimal")]


def estimate(step, mfu, *, reliable=True, utilisation=0.62):
    return {"step_seconds": step, "mfu": mfu, "reliable": reliable, "compiler_utilisation": utilisation}


def report(label, *, fits, temps, total, step, mfu, remat="full", attention="splash", topology="v5p-32", chips=16,
           reliable=True):
    return {"label": label, "spec": "configs/paper/llama_3_1_8b.py:regime=math", "model": "llama-3.1-8b",
            "topology": topology, "chips": chips, "mesh": {"data": 1, "fsdp": 16, "tensor": 1}, "micro_batches": 8,
            "attention": attention, "remat_policy": remat, "costs": {"roofline_step_seconds": 5.3449},
            "programs": {"train": {"fits": fits, "total_gib": total, "temporaries_gib": temps}},
            "estimate": estimate(step, mfu, reliable=reliable), "wall_seconds": 612.4, "cpu_seconds": 201.6}


def write(folder, name, content):
    (folder / f"{name}.json").write_text(json.dumps(content))


def test_table_from_hand_made_json(tmp_path):
    first, second, third = (r.label for r in ROWS)
    write(tmp_path, first, report(first, fits=True, temps=6.04, total=11.66, step=6.25, mfu=0.6123))
    write(tmp_path, second, {"label": second, "error": ["compile: error: something broke"], "wall_seconds": 3.0})
    write(tmp_path, "hand_added_row", report("hand_added_row", fits=False, temps=18.25, total=24.0, step=1.0,
                                              mfu=1.5, remat="none", attention="xla", topology="v5e-16",
                                              reliable=False))
    oom = "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (16.58G) exceeds available HBM (15.75G)."
    write(tmp_path, "oom_row", {"label": "oom_row", "error": ["jax.errors.JaxRuntimeError: " + oom]})
    lines = compile_table.table(tmp_path, rows=ROWS).splitlines()
    assert lines[0] == compile_table.HEADER and lines[1] == "|" + "---|" * 16
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == [first, "llama-3.1-8b", "math", "v5p-32 (16 chips)", "1x16x1", "8", "splash", "full", "yes",
                     "11.7 (6.0)", "5.34", "6.25", "61.2%", "62%", "–", "612 / 202"]
    assert lines[3].startswith(f"| {second} | error: compile: error: something broke |")
    assert lines[3].count("|") == lines[2].count("|")  # an error row keeps the columns
    extra = [c.strip() for c in lines[4].strip("|").split("|")]  # a JSON no row lists comes after the listed rows
    assert extra[0] == "hand_added_row" and extra[6:10] == ["xla", "none", "NO", "24.0 (18.2)"]
    assert extra[12] == "unreliable (150.0%)"
    assert lines[5].startswith("| oom_row | does NOT fit: the TPU compiler ran out of HBM: temporaries 16.58G > 15.75G HBM |")
    assert lines[-1] == f"Not compiled: {third}."


def test_a_reestimate_replaces_an_old_estimate_and_keeps_it():
    label = ROWS[0].label
    old = report(label, fits=True, temps=6.0, total=11.6, step=5.11, mfu=1.044)
    del old["estimate"]["reliable"]  # an estimate of the earlier method
    assert compile_table.needs_reestimate(old) and not compile_table.needs_reestimate({"error": ["x"]})
    new = {"estimate": estimate(8.1, 0.66), "programs": {}}  # an --estimate_only report: no programs
    run = {"wall_seconds": 400.0, "cpu_seconds": 380.0}
    merged = compile_table.merge_estimate(old, new, run)
    assert merged["estimate"] == new["estimate"] and merged["estimate_superseded"] == old["estimate"]
    assert merged["programs"] == old["programs"] and not compile_table.needs_reestimate(merged)
    cells = [c.strip() for c in compile_table.table_line(merged).strip("|").split("|")]
    assert cells[11:] == ["8.10", "66.0%", "62%", "104%", "612 / 202 (re-estimate 400 / 380)"]
    old_cells = [c.strip() for c in compile_table.table_line(old).strip("|").split("|")]
    assert old_cells[12:14] == ["104.4% (old method)", "–"]


def test_table_mode_prints_from_json_and_compiles_nothing(tmp_path):
    label = compile_table.ROWS[0].label
    write(tmp_path, label, report(label, fits=True, temps=6.0, total=11.6, step=6.0, mfu=0.654))
    done = subprocess.run([sys.executable, "experiments/compile_table.py", "--table", f"--out={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"| {label} | llama-3.1-8b |" in done.stdout and "65.4%" in done.stdout
    assert compile_table.ROWS[1].label in done.stdout.splitlines()[-1]  # listed as not compiled
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{label}.json"]


def test_existing_or_claimed_rows_are_not_compiled_again(tmp_path):
    done, claimed = ROWS[0], ROWS[1]
    write(tmp_path, done.label, {"label": done.label})
    (tmp_path / f"{claimed.label}.running").touch()
    assert not compile_table.compile_row(done, out=tmp_path)
    assert not compile_table.compile_row(claimed, out=tmp_path)
    assert json.loads((tmp_path / f"{done.label}.json").read_text()) == {"label": done.label}
    assert not (tmp_path / f"{claimed.label}.json").exists()


def test_row_flags_set_attention_and_policy_and_none_turns_remat_off():
    assert ROWS[0].flags() == ["--config.model.attention=splash", "--config.model.remat_policy=full"]
    assert ROWS[1].flags() == ["--config.model.attention=xla", "--config.model.remat_policy=none",
                               "--config.model.remat=False", "--config.mesh.fsdp=16"]
    assert len({r.label for r in compile_table.ROWS}) == len(compile_table.ROWS)
