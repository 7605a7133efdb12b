"""experiments.tables: raw records rendered as the expected Markdown, --check failing on a changed doc or a
changed raw file, and every generated block of the repository in sync with the committed raw output."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from experiments import raw, tables

ROOT = tables.REPO_ROOT
MACHINE = {"cpu_model": "Test CPU", "processor": "x86_64", "machine": "x86_64", "cpu_count": 2,
           "load_average": [1.0, 2.5, 3.0], "jax": "0.0.1", "backend": "cpu"}


def payload(script, settings, figures):
    return raw.record(script=script, settings=settings, figures=figures, machine_info=MACHINE)


def test_bench_data_record_renders_rates_and_packing():
    rows = [{"task": "figfont", "max_length": None, "stage": "load/generate", "examples": 100, "seconds": 2.0},
            {"task": "figfont", "max_length": 512, "stage": "tokenize", "examples": 100, "seconds": 0.5,
             "tokens": 20000, "dropped": 0, "mean_tokens": 200.0, "max_tokens": 400},
            {"task": "figfont", "max_length": 512, "stage": "batch: first-fit packed", "examples": 200,
             "seconds": 0.01, "tokens": 40200, "non_pad": 0.9123}]
    assert tables.render(payload("bench_data", {"batch_size": 16}, {"rows": rows})) == (
        "Machine: Test CPU, 2 CPUs, load average 1.0/2.5/3.0, jax 0.0.1 on cpu.\n\n"
        "| task | max length | stage | examples | seconds | examples/s | tokens/s | non-pad |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| figfont | – | load/generate | 100 | 2.00 | 50 | – | – |\n"
        "| figfont | 512 | tokenize | 100 | 0.50 | 200 | 40000 | – |\n"
        "| figfont | 512 | batch: first-fit packed | 200 | 0.01 | 20000 | 4020000 | 0.912 |")


def test_packing_table_has_one_line_per_task_and_length():
    rows = [{"task": "t", "max_length": 512, "stage": "tokenize", "examples": 1, "seconds": 1.0}]
    rows += [{"task": "t", "max_length": 512, "stage": f"batch: {stage}", "examples": 1, "seconds": 1.0,
              "non_pad": value} for stage, value in (("rows padded to max_length", 0.25),
                                                      ("rows padded to buckets", 0.5), ("first-fit packed", 0.9999))]
    assert tables.packing_table({"rows": rows}).splitlines()[2:] == ["| t | 512 | 0.250 | 0.500 | 1.000 |"]


def test_bench_generate_and_sampler_records_report_the_best_run():
    generate = {"load_seconds": 4.25, "batches": [
        {"batch": 2, "compile_seconds": 10.0, "prefill_seconds": [0.5, 0.4], "decode_seconds": [3.2, 6.4],
         "prefill_tokens": 256, "decode_tokens": 128}]}
    assert tables.render_bench_generate(generate, {"model": "m", "new_tokens": 64}) == (
        "load m: 4.25 s\n\n"
        "| batch | prefill tokens/s (best) | decode tokens/s (best) | decode ms/step (best) | "
        "first call incl. compile (s) |\n|---|---|---|---|---|\n"
        "| 2 | 640.0 | 40.0 | 50.0 | 10.0 |")
    sampler = {"settings": [{"name": "n=4 shared", "rows": 4, "compile_seconds": 1.0, "runs": [
        {"seconds": 8.0, "decode_seconds_per_step": None}, {"seconds": 4.0, "decode_seconds_per_step": None}]},
        {"name": "generate batch 1", "rows": 1, "runs": [{"seconds": 2.0, "decode_seconds_per_step": 0.025}]}]}
    assert tables.render_bench_sampler(sampler, {"new_tokens": 10}) == (
        "| setting | seconds (prefill + decode, best) | new tokens/s | decode ms/step |\n|---|---|---|---|\n"
        "| n=4 shared | 4.00 | 10.0 | – |\n"
        "| generate batch 1 | 2.00 | 5.0 | 25.0 |")


def test_profile_record_gives_medians_and_matmul_rate():
    figures = {"matmul_flops_per_step": 3e9, "tokens": 8, "op_seconds": {"matmul": 3.0, "copy": 1.0},
               "phases": [{"phase": "matmuls", "xla": "project", "first_s": 2.0, "rounds": [1.0, 3.0, 1.5]},
                          {"phase": "transfer", "xla": "-", "first_s": 0.1, "rounds": [0.002]}]}
    assert tables.render_profile_train_step(figures, {}) == (
        "| phase | XLA options | s: median (rounds) |\n|---|---|---|\n"
        "| matmuls | project | 1.500 (1.000, 3.000, 1.500), 2 GFLOP/s |\n"
        "| transfer | - | 0.002 (0.002) |\n\n"
        "| op kind (one traced step) | s (thread time) | share |\n|---|---|---|\n"
        "| matmul | 3.00 | 75% |\n| copy | 1.00 | 25% |")


def test_prior_and_noise_gate_tables_from_hand_made_rows():
    tasks = {"b": {"mean_p": 0.6, "example_mean_p_first8": 0.55, "nll": 1.0, "examples": 16, "mean_length": 99.6,
                   "max_length": 120},
             "a": {"mean_p": 0.01, "example_mean_p_first8": 0.0071, "nll": 8.8586, "examples": 16,
                   "mean_length": 210.0, "max_length": 438}}
    assert tables.prior_table(tasks).splitlines()[2:] == ["| a | 0.010 | 0.007 | 8.859 | 16 | 210, 438 |",
                                                         "| b | 0.600 | 0.550 | 1.000 | 16 | 100, 120 |"]
    row = {"task": "t", "wrong_tokens": 2, "tokens": 10, "token_share": 0.2, "mean_p_wrong": 0.01,
           "mean_p_twin": 0.5, "mean_alpha_wrong": 0.7, "grad_wrong_over_twin": 2.0}
    rows = [dict(row, objective="nll", gradient_share=0.4, mean_gate_wrong=1.0),
            dict(row, objective="dft", gradient_share=0.1, mean_gate_wrong=0.01),
            dict(row, objective="deft", gradient_share=0.1, mean_gate_wrong=0.2)]
    lines = tables.noise_gates_study_table({"rows": rows}).splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == ["nll", "deft"]  # DFT left to the full table
    assert lines[3] == "| t | deft | 2 of 10 | 0.2 | 0.1 | 0.25 | 0.010 (0.500) | 0.700 | 0.2 | 2.00 |"


def test_initial_gates_from_hand_made_panels():
    from experiments import figures

    labels = [label for label, _ in tables.INITIAL_COLUMNS]
    tokens = {"p": np.array([0.2, 0.6]), "entropy": np.array([1.0, 2.0]), "collision": np.array([0.5, 0.5])}
    panels = {}
    for regime in figures.study.REGIMES:
        for i, label in enumerate(labels):  # objective i: gate = (i + 1) / 8 on both tokens
            gate = np.full(2, 1.0 if label == "nll" else (i + 1) / 8)
            grad = figures.gradient_magnitude(p=tokens["p"], gate=gate, collision=tokens["collision"])
            panels[(regime, label)] = {**tokens, "gate": gate, "grad_norm": grad}
    summary = figures.initial_summary(panels)
    weak = summary["weak"]
    assert (weak["tokens"], weak["mean_p"], weak["mean_entropy"]) == (2, pytest.approx(0.4), pytest.approx(1.5))
    # A constant gate g scales every token's gradient by g: the ratio to NLL's is g itself.
    assert weak["objectives"]["deft"] == {"mean_gate": 0.75, "grad_ratio": pytest.approx(0.75)}
    lines = tables.render(payload("figures_initial", {}, summary)).splitlines()
    assert lines[4:6] == ["| weak (2, 0.400, 1.50) | mean gate | 1.000 | 0.250 | 0.375 | 0.500 | 0.625 | 0.750 | 0.875 |",
                          "| | ‖grad‖ / NLL's | 1.000 | 0.250 | 0.375 | 0.500 | 0.625 | 0.750 | 0.875 |"]


def test_an_empty_block_is_filled_and_leaves_the_next_block_alone():
    from experiments.continuum import verdicts

    text = ("<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED -->\nprose\n"
            "<!-- BEGIN GENERATED: b -->\nold\n<!-- END GENERATED -->\n")
    filled, found = verdicts.replace_blocks(text, {"a": "A", "b": "B"})
    assert found == ["a", "b"]
    assert filled == ("<!-- BEGIN GENERATED: a -->\nA\n<!-- END GENERATED -->\nprose\n"
                      "<!-- BEGIN GENERATED: b -->\nB\n<!-- END GENERATED -->\n")


def test_compile_eval_table_from_a_hand_made_report():
    gib = 2**30
    report = {"model": "m", "topology": "v5e-16", "hbm_capacity_gib": 16.0, "decode_slots": 128,
              "programs": {"prefill": {"fits": True, "bytes": {"total": 3 * gib, "temporaries": gib // 2}},
                           "decode": {"fits": False, "bytes": {"total": 17 * gib, "parts": {"kv_cache": 4 * gib}}}},
              "evaluation": {"compiler": {"step_seconds": 0.1, "tokens_per_second_per_chip": 80.0, "chip_hours": 86.3},
                             "hbm": {"step_seconds": 0.045, "tokens_per_second_per_chip": 177.8, "chip_hours": 38.84},
                             "compiler_problem": ""}}
    line = tables.compile_eval_table([report]).splitlines()[2]
    assert line == ("| m | v5e-16 (16) | 128 | 3.00 (0.50) | 17.00 | 4.00 | NO | 100.0 / 45.0 | 80 / 178 | "
                    "86.3 / 38.8 |")
    report["evaluation"]["compiler_problem"] = "beats the HBM bound"
    assert "100.0 (unreliable) / 45.0" in tables.compile_eval_table([report])


def test_unknown_script_is_refused():
    with pytest.raises(ValueError, match="no renderer"):
        tables.render(payload("not_a_script", {}, {}))


def test_raw_record_names_the_machine_and_writes_numpy_values(tmp_path):
    record = raw.record(script="s", settings={"n": 1}, figures={"times": np.array([1.5, 2.5]), "n": np.int64(3)})
    assert {"cpu_model", "processor", "cpu_count", "load_average", "jax"} <= set(record["machine"])
    assert record["machine"]["cpu_count"] == os.cpu_count()
    back = raw.read(raw.write(tmp_path / "a" / "r.json", record))
    assert back["figures"] == {"times": [1.5, 2.5], "n": 3} and back["settings"] == {"n": 1}


@pytest.fixture()
def tree(tmp_path):
    """A copy of the managed docs and the raw files (the continuum's results linked, read only)."""
    for relative in list(tables.DOCS) + list(tables.RAW_FILES):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    for relative in tables.RAW_FOLDERS:
        shutil.copytree(ROOT / relative, tmp_path / relative)
    (tmp_path / tables.CONTINUUM_RESULTS).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / tables.CONTINUUM_RESULTS).symlink_to(ROOT / tables.CONTINUUM_RESULTS)
    return tmp_path


def test_check_fails_on_a_changed_doc_and_write_restores_it(tree, capsys):
    assert tables.main(["--root", str(tree), "--check"]) == 0
    doc = tree / "experiments" / "prior.md"
    original = doc.read_text()
    doc.write_text(original.replace("| figfont | 0.010 |", "| figfont | 0.011 |"))
    assert tables.main(["--root", str(tree), "--check"]) == 1
    assert "prior.md" in capsys.readouterr().err
    assert tables.main(["--root", str(tree), "--write"]) == 0
    assert doc.read_text() == original


def test_a_changed_raw_file_changes_every_doc_that_quotes_it(tree):
    path = tree / tables.PRIOR
    prior = json.loads(path.read_text())
    prior["figfont"]["mean_p"] = 0.0123
    path.write_text(json.dumps(prior))
    assert tables.main(["--root", str(tree), "--check"]) == 1
    assert tables.main(["--root", str(tree), "--write"]) == 0
    for doc in ("experiments/prior.md", "experiments/README.md"):
        assert "| figfont | 0.012 | 0.007 | 8.859 |" in (tree / doc).read_text(), doc


def test_a_doc_without_its_markers_is_an_error(tree, capsys):
    doc = tree / "experiments" / "noise_gates.md"
    doc.write_text(doc.read_text().replace("<!-- BEGIN GENERATED: table-noise-gates -->\n", ""))
    assert tables.main(["--root", str(tree), "--check"]) == 2
    assert "table-noise-gates" in capsys.readouterr().err


def test_every_generated_block_matches_the_committed_raw_output():
    files, generated = tables.expected_files()
    stale = [str(path) for path, text in files.items() if path.read_text() != text]
    assert not stale, f"{stale} differ from the raw results: run python -m experiments.tables --write"
    for relative, names in tables.DOCS.items():
        text = (ROOT / relative).read_text()
        assert all(f"<!-- BEGIN GENERATED: {name} -->" in text for name in names), relative
