"""experiments/: the studies' --smoke variants end to end (tiny model), resumption, tables, figures, maths."""
import csv
import json
import math
import pathlib
import statistics

import numpy as np
import pytest

from experiments import figures, study


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory):
    """All three smoke studies in one workdir (they share runs), trained in this process."""
    workdir = tmp_path_factory.mktemp("study_smoke")
    messages = []
    for name in study.STUDIES:
        study.run_study(name, workdir=workdir, smoke=True, in_process=True, log=messages.append)
    return workdir, messages


def _rows(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_smoke_studies_train_evaluate_and_tabulate(smoke_workdir):
    workdir, _ = smoke_workdir
    specs = {name: study.study_specs(name, smoke=True) for name in study.STUDIES}
    for name, runs in specs.items():
        for spec in runs:
            assert (workdir / spec.name / "SWEEP_DONE.json").is_file(), spec.name
            report = json.loads(next((workdir / spec.name / "eval").glob("step_*.json")).read_text())
            assert report["step"] == 2 and math.isfinite(report["teacher_forced"]["nll"])
        rows = _rows(workdir / f"{name}.csv")
        trained = [row for row in rows if row["objective"] != "base"]
        assert {(r["regime"], r["objective"], float(r["noise"])) for r in trained} == \
            {(s.regime, s.point()["objective"], s.noise) for s in runs}
        assert "SMOKE" in (workdir / f"{name}.md").read_text()
    continuum = _rows(workdir / "continuum.csv")
    assert {row["regime"] for row in continuum if row["objective"] == "base"} == set(study.REGIMES)
    # seeds: the table's mean and std are those of the per-seed evaluation reports
    for row in _rows(workdir / "seeds.csv"):
        values = []
        for seed in row["seeds"].split(","):
            name = study.RunSpec(row["regime"], row["objective"], seed=int(seed)).name
            values.append(json.loads(next((workdir / name / "eval").glob("step_*.json")).read_text())
                          ["teacher_forced"]["nll"])
        assert len(values) == 2
        assert float(row["nll_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-9)
        assert float(row["nll_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)


@pytest.mark.slow
def test_relaunch_skips_finished_runs(smoke_workdir):
    workdir, _ = smoke_workdir
    messages = []
    study.run_study("noise", workdir=workdir, smoke=True, in_process=True, log=messages.append)
    trained = [m for m in messages if ": training in " in m or ": resuming in " in m]
    assert not trained, trained
    assert sum("already finished" in m for m in messages) == len(study.study_specs("noise", smoke=True))



@pytest.mark.slow
def test_the_raw_record_keeps_each_runs_training_curve_and_token_count(smoke_workdir):
    workdir, _ = smoke_workdir
    record = {}
    study.run_study("seeds", workdir=workdir, smoke=True, in_process=True, record=record, log=lambda m: None)
    runs = record["seeds"]["runs"]
    for spec, row in zip(study.study_specs("seeds", smoke=True), runs):
        lines = [json.loads(line) for line in (workdir / spec.name / "metrics.jsonl").read_text().splitlines()]
        steps = [line for line in lines if "train/mean_p" in line]
        assert len(steps) == study.plan([spec], workdir=workdir, smoke=True)[0].config.total_steps
        assert row["steps"]["mean_p"] == [line["train/mean_p"] for line in steps]
        assert row["steps"]["mean_alpha"] == [line["train/mean_alpha"] for line in steps]
        assert steps[-1]["time"] - steps[0]["time"] < row["training_seconds"]
        report = json.loads(next((workdir / spec.name / "eval").glob("step_*.json")).read_text())
        assert row["supervised_tokens"] == report["teacher_forced"]["supervised_tokens"] > 0
        assert row["mean_p"] == report["teacher_forced"]["mean_p"]  # the eval metric, not the curve

def test_studies_share_runs():
    names = {name: {s.name for s in study.study_specs(name, smoke=False)} for name in study.STUDIES}
    without_dft = len(study.REGIMES) - len(study.DFT_REGIMES)  # DFT trains −p's model: weak regime only
    assert len(names["continuum"]) == len(study.REGIMES) * len(study.OBJECTIVES) - without_dft
    assert {s for s in names["continuum"] if "-dft-" in s} == {f"{r}-dft-noise0-seed0" for r in study.DFT_REGIMES}
    assert {s for s in names["noise"] if "noise0-" in s} <= names["continuum"] | names["seeds"]
    assert {s for s in names["seeds"] if s.endswith("seed0")} <= names["continuum"]
    assert len(names["seeds"]) == 6 and len(names["noise"]) == 14  # 2 levels x (NLL, DEFT x 3 seeds + −p)


@pytest.mark.slow
def test_figures_from_smoke_runs(smoke_workdir, tmp_path):
    workdir, _ = smoke_workdir
    written = figures.main([f"--workdir={workdir}", f"--out={tmp_path}", "--smoke", "--scatter_examples=2"])
    assert sorted(p.name for p in written) == ["dynamics.png", "scores.png", "token_scatter.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 400_000
    stats = np.load(workdir / study.RunSpec("weak", "deft").name / figures.STATS_FILE)
    assert stats["p"].shape == stats["grad_norm"].shape and stats["p"].size > 0
    assert np.all((stats["p"] > 0) & (stats["p"] <= 1)) and np.all(stats["gate"] > 0)


def test_gradient_magnitude_equals_direct_norm():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 11)) * rng.uniform(0.1, 8, size=(50, 1))
    targets = rng.integers(0, 11, size=50)
    pi = np.exp(logits - logits.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    p = pi[np.arange(50), targets]
    gate = rng.uniform(0, 1, size=50)
    direct = gate * np.linalg.norm(pi - np.eye(11)[targets], axis=-1)
    np.testing.assert_allclose(figures.gradient_magnitude(p=p, gate=gate, collision=(pi ** 2).sum(-1)), direct,
                               rtol=1e-10, atol=1e-12)


def test_unknown_study_and_config_arguments_raise():
    with pytest.raises(ValueError, match="unknown study"):
        study.study_specs("continum", smoke=True)
    from configs import study as study_config

    with pytest.raises(ValueError, match="regime"):
        study_config.get_config("regime=medium,smoke")
    with pytest.raises(ValueError, match="objective"):
        study_config.get_config("objective=tsallis,smoke")
    with pytest.raises(SystemExit, match="add initial_scatter to --only"):  # before any work
        figures.main(["--only=scores", "--json=unused.json", "--workdir=/nonexistent"])


def test_only_selects_named_runs_and_rejects_unknown_names():
    specs = study.study_specs("continuum", smoke=False)
    chosen = study.select(specs, only=["strong-deft-noise0-seed0", "weak-nll-noise0-seed0"])
    assert [s.name for s in chosen] == ["weak-nll-noise0-seed0", "strong-deft-noise0-seed0"]
    assert study.select(specs, only=None) == specs
    with pytest.raises(ValueError, match="not runs of this study"):
        study.select(specs, only=["strong-deft-seed0"])


def test_each_noisy_seed_corrupts_its_own_examples():
    """The noise study's spread covers which labels are wrong; at 0% noise the seed leaves noise_seed alone
    (so the seeds study's runs are the noise study's 0% runs)."""
    from configs import study as study_config
    from deft_jax import data as data_lib

    assert study_config.get_config("noise=0.0,seed=2,smoke").data.noise_seed == 0
    corrupted = {}
    for seed in (1, 2):
        config = study_config.get_config(f"noise=0.2,seed={seed},smoke")
        assert config.data.noise_seed == seed
        corrupted[seed] = {e.index for e in data_lib.load_examples(config.data, split="train") if e.corrupted}
    assert len(corrupted[1]) == len(corrupted[2]) > 0 and corrupted[1] != corrupted[2]


def test_wrong_answer_tokens_start_where_the_twin_differs():
    """Hand-built: two examples, the second corrupted in its 3rd and 4th supervised tokens (EOS 0 shared)."""
    from types import SimpleNamespace

    from experiments import noise_gates

    def tokenized(tokens, prompt_length):
        return SimpleNamespace(tokens=np.asarray(tokens), prompt_length=prompt_length)

    noisy = [tokenized([1, 2, 5, 6, 7], 2), tokenized([1, 2, 5, 6, 8, 9, 0], 2)]  # supervised: 3 + 5 tokens
    twins = [tokenized([1, 2, 5, 6, 3, 0], 2)]  # the clean second example: 4 supervised tokens
    grad = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0, 16.0])  # wrong-answer tokens: 4.0 and 8.0
    stats = {"g": {"p": np.linspace(0.1, 0.8, 8), "collision": np.full(8, 0.5), "gate": np.ones(8), "grad_norm": grad}}
    twin_stats = {"g": {"p": np.array([0.9, 0.9, 0.6, 0.7]), "grad_norm": np.array([3.0, 3.0, 1.0, 3.0])}}
    (row,) = noise_gates.wrong_answer_rows(noisy_stats=stats, twin_stats=twin_stats, noisy_tokenized=noisy,
                                           twin_tokenized=twins, corrupted=[False, True], task="t")
    assert row["wrong_tokens"] == 2 and row["tokens"] == 8 and row["token_share"] == pytest.approx(2 / 8)
    assert row["gradient_share"] == pytest.approx(12 / 35)
    assert row["mean_p_wrong"] == pytest.approx(np.linspace(0.1, 0.8, 8)[5:7].mean())
    assert row["mean_p_twin"] == pytest.approx(0.6)  # the twin's right answer: its 3rd token alone
    assert row["grad_wrong_over_twin"] == pytest.approx(6.0 / 1.0)
    assert noise_gates.first_difference(np.array([1, 2]), np.array([1, 2, 3])) == 2
    a, b = noise_gates.differing_spans(np.array([7, 1, 7]), np.array([7, 7]))  # an insertion: a has one more
    assert (a, b) == (slice(1, 2), slice(1, 1))
    with pytest.raises(ValueError, match="supervised tokens"):
        noise_gates.split_per_example(np.ones(7), noisy)


def test_noise_gates_smoke_on_gsm8k(shared_data_dir):
    """End to end on the tiny model: the wrong answers are the corrupted examples' changed final numbers
    (+ EOS), NLL's share is the reference, and under NLL's gate (1) the gradient is ‖π − e_y‖ alone."""
    from experiments import noise_gates

    rows = noise_gates.main(["--smoke", "--tasks=gsm8k", "--num=10", "--noise=0.3"])
    by_objective = {row["objective"]: row for row in rows}
    assert set(by_objective) == set(figures.study_objective_specs())
    assert len({(r["wrong_tokens"], r["tokens"], r["mean_p_wrong"]) for r in rows}) == 1  # one forward pass
    nll = by_objective["nll"]
    assert 3 <= nll["wrong_tokens"] < nll["tokens"] and nll["mean_gate_wrong"] == pytest.approx(1.0)
    for row in rows:
        assert 0 < row["gradient_share"] < 1


def test_noise_gates_on_trained_noisy_runs(smoke_workdir):
    """--workdir: a noisy run's own training set under its checkpoint and (once per set) the base model;
    training on the wrong answers raises their probability above the base model's."""
    from experiments import noise_gates

    workdir, _ = smoke_workdir
    runs = [workdir / study.RunSpec("weak", objective, noise=0.2).name for objective in ("nll", "deft")]
    rows = noise_gates.main([f"--workdir={run}" for run in runs])
    models = list(dict.fromkeys(row["model"] for row in rows))
    assert models == ["base"] + [str(run) for run in runs]
    p_wrong = {row["model"]: row["mean_p_wrong"] for row in rows if row["objective"] == "nll"}
    assert p_wrong[str(runs[0])] > p_wrong["base"]
    assert "| model | task |" in noise_gates.trained_markdown(rows)
    with pytest.raises(SystemExit, match="without label noise"):
        noise_gates.main([f"--workdir={workdir / study.RunSpec('weak', 'nll').name}"])
