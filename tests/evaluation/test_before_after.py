"""The train command's closing table (base vs fine-tuned) and the objective comparison's summary rows."""
import json

import numpy as np
import pytest

from deft_jax.evaluation import before_after, scoring
from deft_jax import sweeping
from tests.helpers.runs import run_module, subprocess_env


def _textbook_figfont(prediction, reference):
    """Independent FigFont figures: exact match by hand, Jaro-Winkler from jellyfish (lower-cased, stripped)."""
    jellyfish = pytest.importorskip("jellyfish")
    p, r = prediction.strip(), reference.strip()
    return {"exact_match": float(p == r), "case_insensitive": float(p.lower() == r.lower()),
            "jaro_winkler": jellyfish.jaro_winkler_similarity(p.lower(), r.lower())}


def test_figfont_figures_are_means_of_independently_computed_answers():
    records = [{"prediction": " HELLO", "reference": "HELLO"}, {"prediction": "help", "reference": "HELLO"},
               {"prediction": "xq", "reference": "CAT"}, {"prediction": "Cat\n", "reference": "CAT"}]
    figures = before_after.figures_from_generations(records, scoring_task="figfont")
    expected = [_textbook_figfont(r["prediction"], r["reference"]) for r in records]
    for name in ("exact_match", "case_insensitive", "jaro_winkler"):
        assert figures[name] == pytest.approx(np.mean([e[name] for e in expected]), abs=1e-12)
    assert figures["exact_match"] == 0.25 and figures["case_insensitive"] == 0.5


def test_sweep_rows_carry_the_figures_and_the_base_row_comes_first():
    result = {"generation": {"scoring_task": "figfont", "score": 0.5},
              "predictions": [{"prediction": "CAT", "reference": "CAT"}, {"prediction": "DOG", "reference": "CAT"}],
              "teacher_forced": {"mean_p": 0.25, "nll": 2.0}}
    row = sweeping.base_row(result, swept=["objective.name"])
    assert row["status"] == "base" and row["objective.name"] is None and row["mean_p"] == 0.25
    assert row["exact_match"] == 0.5
    assert row["jaro_winkler"] == pytest.approx(np.mean([1.0, scoring.figfont_score(prediction="DOG",
                                                                                    reference="CAT")]))
    assert sweeping.task_figures({"generation": {"scoring_task": "gsm8k"},
                                  "predictions": [{"prediction": "4", "reference": "4", "score": 1.0}]}) == {}


@pytest.mark.slow
def test_train_command_ends_with_base_and_fine_tuned_rows_recomputable_from_generations(tmp_path):
    """A tiny model trained 2 steps on FigFont: the train command prints the table; the fine-tuned row
    differs from the base row, and every figure equals an independent recomputation from the generations
    saved in the report."""
    workdir = tmp_path / "run"
    done = run_module("deft_jax.train", "--config=configs/nll.py:smoke,task=figfont", "--config.data.max_length=640",
                      "--config.data.seq_len=640", "--config.eval.report_prompts=8", "--config.optim.lr=0.01",
                      f"--workdir={workdir}", env=subprocess_env(devices=2))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((workdir / "eval" / "before_after.json").read_text())
    base, tuned = report["rows"]
    assert base["model"] == "base" and tuned["model"] == f"step {report['step']}" and report["step"] == 2
    assert base["mean_p"] != tuned["mean_p"]
    assert base["prompts"] == tuned["prompts"] == 8
    for row, result in zip(report["rows"], report["results"].values()):
        records = result["predictions"]
        assert len(records) == 8 and result["generation"]["scoring_task"] == "figfont"
        expected = [_textbook_figfont(r["prediction"], r["reference"]) for r in records]
        for name in ("exact_match", "jaro_winkler"):
            assert row[name] == pytest.approx(np.mean([e[name] for e in expected]), abs=1e-12)
        assert row["mean_p"] == result["teacher_forced"]["mean_p"]
    printed = done.stdout
    assert "| base |" in printed and f"| step {report['step']} |" in printed
    assert str(workdir / "eval" / "before_after.md") in printed and "tensorboard --logdir" in printed
