"""The continuum's verdicts: the docs' generated blocks, verdicts.md, summary.json and the probe's evidence
regenerated from the committed results; the published tables recomputed from runs.csv; the verdict
rules on a hand-made study whose answer is known."""
import math
import pathlib

import numpy as np
import pytest

from experiments.continuum import analyze, stats, verdicts

RESULTS = pathlib.Path(verdicts.REPO_ROOT) / "experiments" / "continuum" / "results"


def test_generated_docs_and_files_match_the_committed_results():
    files, generated = verdicts.expected_files(RESULTS)
    stale = [str(path) for path, text in files.items() if path.read_text() != text]
    assert not stale, f"{stale} differ from the results: run python -m experiments.continuum.verdicts --write_docs"
    docs = "".join(path.read_text() for path in verdicts.DOCS)
    assert all(verdicts.BEGIN.format(name=name) in docs for name in generated)  # every block is included


def test_every_published_table_is_recomputed_from_the_raw_results():
    results, bases, source = analyze.load_study(RESULTS)
    assert source == "raw" and len(bases) == 6
    text, _ = analyze.report_of(results, bases)
    assert text == (RESULTS / "continuum.md").read_text()
    # One cell by hand from the raw rows: level 1, no noise, NLL, character accuracy.
    cell = [r["generation"]["char_accuracy"] for r in results
            if (r["level"], r["noise"], r["label"]) == (1, 0.0, "nll")]
    mean, half = np.mean(cell), 2.776 * np.std(cell, ddof=1) / math.sqrt(len(cell))
    assert len(cell) == 5 and f"{mean:.3f} ± {half:.3f}" in text


def test_tables_recomputed_from_runs_csv_match_the_grid_before_the_streams_were_separated():
    before = RESULTS / "before-streams"
    results, bases, source = analyze.load_study(before)
    assert source == "csv" and len(results) == 546 and len(bases) == 6
    text, _ = analyze.report_of(results, bases)
    published = (before / "continuum.md").read_text()
    # Everything up to the tables that need the raw files (α trajectory, wrong labels) matches.
    assert text[:text.index("(DEFT's α trajectory")] == published[:published.index("## DEFT's α trajectory")]
    cell = [r["generation"]["char_accuracy"] for r in results
            if (r["level"], r["noise"], r["label"]) == (1, 0.0, "nll")]
    mean, half = np.mean(cell), 2.776 * np.std(cell, ddof=1) / math.sqrt(len(cell))
    assert f"{mean:.3f} ± {half:.3f}" in published


def fake_study(*, nll_lead: float, seeds=5):
    """Three objectives at a weak (p 0.1) and a strong (p 0.9) level; NLL leads the others by `nll_lead`
    at the weak level with per-seed jitter, −p leads at the strong level."""
    rng = np.random.default_rng(0)
    results = []
    for level, p in ((0, 0.1), (1, 0.9)):
        for seed in range(seeds):
            base = 0.5 + 0.05 * rng.normal()
            scores = {"nll": base + (nll_lead if level == 0 else 0.0), "eaft": base, "prob": base - 0.1}
            if level == 1:
                scores["prob"] = base + 0.2
            for label, score in scores.items():
                score += 0.005 * rng.normal()
                results.append({"level": level, "seed": seed, "noise": 0.0, "label": label, "name": f"{level}{seed}{label}",
                                "generation": {"char_accuracy": score}, "eval": {"mean_p": score}, "seconds": 1.0})
    bases = [{"level": level, "target_examples": 0, "sft_data": {"mean_p": p, "nll": 1.0}, "eval": {"mean_p": p},
              "generation": {"char_accuracy": 0.0}} for level, p in ((0, 0.1), (1, 0.9))]
    return verdicts.Study(results, bases), results


@pytest.mark.parametrize("lead, expected", [(0.2, "holds"), (0.0, "unresolved"), (-0.2, "fails")])
def test_best_where_the_prior_is_weak_follows_the_data(lead, expected):
    study, results = fake_study(nll_lead=lead)
    found = verdicts.best_where(study, favourite="nll", regimes=("weak",), metric="accuracy", noise=0.0,
                                key="k", claim="NLL is best where the prior is weak")
    # lead 0: NLL ties EAFT (not resolved) and beats −p (resolved): some support, none against → unresolved.
    assert found["status"] == expected
    # The family's numbers are the per-seed paired differences, recomputed here with NumPy.
    for comparison in found["family"]:
        a = [r["generation"]["char_accuracy"] for r in results if (r["level"], r["label"]) == (0, comparison["a"])]
        b = [r["generation"]["char_accuracy"] for r in results if (r["level"], r["label"]) == (0, comparison["b"])]
        d = np.subtract(a, b)
        assert comparison["difference"] == pytest.approx(d.mean())
        assert comparison["half"] == pytest.approx(stats.t_quantile(n=5) * d.std(ddof=1) / math.sqrt(5))
    first = min(found["family"], key=lambda c: c["p"])  # Holm multiplies the smallest p by m = 2
    assert len(found["family"]) == 2 and first["p_holm"] == pytest.approx(min(1.0, 2 * first["p"]))
    assert f"**{expected}**" in found["text"]


def test_evidence_names_the_separated_best_per_level():
    study, results = fake_study(nll_lead=0.2)
    bases = [{"level": x, "target_examples": 0, "sft_data": {"mean_p": p, "nll": 1.0}, "eval": {"mean_p": p},
              "generation": {"char_accuracy": 0.0}} for x, p in study.base_p.items()]
    found = verdicts.evidence(results, bases)
    weak, strong = (entry["metrics"]["accuracy"] for entry in found["levels"])
    assert weak["best"] == "nll" and sorted(weak["ahead_of"]) == ["eaft", "prob"]
    assert strong["best"] == "prob" and sorted(strong["ahead_of"]) == ["eaft", "nll"]
    from deft_jax.evaluation import probe

    assert [probe.recommend(p, evidence=found)["objective"] for p in (0.05, 0.5, 0.95)] == ["nll", None, "prob"]


def test_replace_blocks_rewrites_only_marked_text():
    text = "a\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED -->\nb\n"
    new, names = verdicts.replace_blocks(text, {"x": "new"})
    assert new == "a\n<!-- BEGIN GENERATED: x -->\nnew\n<!-- END GENERATED -->\nb\n" and names == ["x"]
    with pytest.raises(KeyError, match="'y'"):
        verdicts.replace_blocks(text.replace(": x", ": y"), {"x": "new"})


def test_a_reduced_grid_gets_its_tables_and_no_verdicts(tmp_path):
    """A smoke-sized selection (one seed, NLL and DEFT, two levels) of the raw results: the analysis writes
    its tables and says why it has no verdicts, instead of failing."""
    results, bases, _ = analyze.load_study(RESULTS)
    reduced = [r for r in results if r["seed"] == 0 and r["label"] in ("nll", "deft") and r["level"] < 2]
    text = analyze.write_outputs(reduced, [b for b in bases if b["level"] < 2], out=tmp_path, smoke=True,
                                 figures_too=False)
    assert "| 1 |" in text and (tmp_path / "runs.csv").is_file()
    assert "No verdicts: the verdicts need every grid objective" in (tmp_path / "verdicts.md").read_text()
