"""Benchmark suites: entries and field layouts, scoring and aggregation of saved samples, bad input, and a
tiny-model run that is killed, resumed (same generations as uninterrupted) and rescored bit for bit."""

import json
import pathlib
import shutil
import jax
import pytest
from deft_jax.model import decoder as M
from deft_jax.inference import sampler
from deft_jax.evaluation import suites
from deft_jax.model import tokenizer as tokenizer_lib


FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "suites"


def _benchmark(name):
    return {b.name: b for b in suites.BENCHMARKS}[name]


def test_every_suite_is_made_of_entries():
    assert suites.SUITES == {"math": ("math500", "minerva", "olympiadbench", "aime24", "amc23"),
                             "medical": ("medical",), "figfont": ("figfont",)}
    math500 = _benchmark("math500")
    assert (math500.decoding.temperature, math500.decoding.top_p, math500.decoding.n,
            math500.decoding.max_new_tokens, math500.decoding.seed) == (1.0, 1.0, 16, 4096, 0)
    assert _benchmark("medical").decoding.greedy and _benchmark("figfont").decoding.max_new_tokens == 5


def test_published_layouts_give_questions_and_references():
    minerva = suites.load_problems(_benchmark("minerva"), data_dir=FIXTURES, num_eval=None)
    assert [p.reference for p in minerva] == ["40", "1024", "\\frac{3}{4}"]  # last \boxed{} of the solution
    olympiad = suites.load_problems(_benchmark("olympiadbench"), data_dir=FIXTURES, num_eval=1)
    assert [(p.question, p.reference) for p in olympiad] == [("Find the smallest prime greater than 20.", "23")]
    amc = suites.load_problems(_benchmark("amc23"), data_dir=FIXTURES, num_eval=None)
    assert amc[0].reference == "2.0" and amc[0].where.endswith("amc23_test.jsonl:1")
    medical = suites.load_problems(_benchmark("medical"), data_dir=FIXTURES, num_eval=None)
    assert medical[0].question == ("Which vitamin deficiency causes scurvy?\n\nA. Vitamin A\nB. Vitamin C\n"
                                   "C. Vitamin D\nD. Vitamin K")
    assert medical[2].question.endswith("A. 20-40\nB. 60-100\nC. 120-160\nD. 180-220")  # options as a list
    assert [p.source for p in medical] == ["MedQA", "MedQA", "MedMCQA"]


def test_math500_from_the_shared_data(shared_data_dir):
    problems = suites.load_problems(_benchmark("math500"), data_dir=shared_data_dir, num_eval=3)
    rows = [json.loads(line) for line in (shared_data_dir / "math500_test.jsonl").read_text().splitlines()[:3]]
    assert [(p.question, p.reference) for p in problems] == [(r["problem"], r["answer"]) for r in rows]


def test_figfont_test_range():
    problems = suites.load_problems(_benchmark("figfont"), data_dir=None, num_eval=2)
    assert [p.where for p in problems] == ["reasoning_gym figlet_font seed=42 item 40000",
                                           "reasoning_gym figlet_font seed=42 item 40001"]
    assert all(p.reference.isupper() and 2 <= len(p.reference) <= 5 for p in problems)


def test_aggregate_math_samples_and_medical_sources():
    problems = [suites.Problem(0, "q", "4", "math500", "x:1"), suites.Problem(1, "q", "\\frac{1}{2}", "math500", "x:2")]
    texts = {0: ["so \\boxed{4}", "\\boxed{5}"], 1: ["\\boxed{3}", "the answer is \\boxed{0.5}"]}
    figures = suites.aggregate(_benchmark("math500"), problems, texts)
    assert figures == {"acc": 0.5, "mean_acc": 0.5, "pass@1": 0.5, "pass@2": 1.0}
    medical = [suites.Problem(0, "q", "B", "MedQA", ""), suites.Problem(1, "q", "C", "MedQA", ""),
               suites.Problem(2, "q", "B", "MedMCQA", "")]
    texts = {0: ["The answer is (B)."], 1: ["Answer: A"], 2: ["\\boxed{B}"]}
    figures = suites.aggregate(_benchmark("medical"), medical, texts)
    assert figures == {"correct": 0.75, "correct/MedMCQA": 1.0, "correct/MedQA": 0.5}  # (0.5 + 1) / 2
    figfont = suites.aggregate(_benchmark("figfont"), [suites.Problem(0, "q", "HELLO", "figfont", "")],
                               {0: [" hello"]})
    assert figfont == {"exact_match": 0.0, "case_insensitive": 1.0, "jaro_winkler": 1.0}


def test_bad_input_messages(tmp_path):
    with pytest.raises(suites.SuiteError, match=r"unknown suite 'maths' \(did you mean 'math'\?\)"):
        suites.select_benchmarks("maths")
    with pytest.raises(suites.SuiteError, match=r"unknown benchmark 'aime' of suite 'math' \(did you mean 'aime24'\?\)"):
        suites.select_benchmarks("math", ["aime"])
    with pytest.raises(suites.SuiteError, match=r"unknown prompt template 'qwen-box' \(did you mean 'qwen-boxed'\?\)"):
        suites.check_template("qwen-box")
    with pytest.raises(suites.SuiteError, match=r"--n=0: .* >= 1"):
        suites.resolve_decoding(_benchmark("math500"), n=0, max_new_tokens=None, seed=None)
    with pytest.raises(suites.SuiteError, match=r"aime24_test.jsonl does not exist"):
        suites.load_problems(_benchmark("aime24"), data_dir=tmp_path, num_eval=None)
    (tmp_path / "aime24_test.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    with pytest.raises(suites.SuiteError, match=r"aime24_test.jsonl:2: record has no 'answer'"):
        suites.load_problems(_benchmark("aime24"), data_dir=tmp_path, num_eval=None)


CONFIG = M.ModelConfig.tiny(vocab_size=264)


@pytest.fixture(scope="module")
def tiny():
    return M.init_params(CONFIG, rng=jax.random.key(1)), tokenizer_lib.byte_level_tokenizer()


def _run(tiny, out_dir, **overrides):
    params, tokenizer = tiny
    kwargs = dict(params=params, model_config=CONFIG, tokenizer=tokenizer, suite="math",
                  benchmarks=["aime24", "amc23"], data_dir=FIXTURES, out_dir=out_dir, n=2, num_eval=None,
                  max_new_tokens=6, template="deepseek-math", max_rows=2, progress=False, log=lambda _: None)
    kwargs.update(overrides)
    return suites.run_suite(**kwargs)


def test_killed_run_resumes_to_the_uninterrupted_report_and_rescore_is_bit_exact(tiny, tmp_path, monkeypatch):
    whole = _run(tiny, tmp_path / "whole")
    assert whole["complete"] and whole["benchmarks"]["aime24"]["scored"] == 3

    real_sample = sampler.sample

    def killed_after_first_batch(*args, **kwargs):
        for batch in real_sample(*args, **kwargs):
            yield batch
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(sampler, "sample", killed_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, tmp_path / "resumed")
    partial = suites.rescore_suite(suite="math", benchmarks=["aime24", "amc23"], out_dir=tmp_path / "resumed")
    assert not partial["complete"] and partial["mean"] == {}
    assert partial["benchmarks"]["aime24"]["scored"] == 1  # one batch of max_rows=2 rows = 1 prompt x 2 samples
    assert "INCOMPLETE" in (tmp_path / "resumed" / "math" / "report.md").read_text()
    monkeypatch.setattr(sampler, "sample", real_sample)
    resumed = _run(tiny, tmp_path / "resumed")
    assert resumed == whole
    for name in ("aime24", "amc23"):
        lines = lambda root: sorted((root / "math" / f"{name}.generations.jsonl").read_text().splitlines())
        assert lines(tmp_path / "resumed") == lines(tmp_path / "whole")

    report_path = tmp_path / "whole" / "math" / "report.json"
    written = report_path.read_bytes()
    report_path.unlink()
    suites.rescore_suite(suite="math", benchmarks=["aime24", "amc23"], out_dir=tmp_path / "whole")
    assert report_path.read_bytes() == written


def test_rerun_with_other_settings_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    (out / "math").mkdir(parents=True)
    shutil.copy(FIXTURES / "amc23_test.jsonl", tmp_path / "amc23_test.jsonl")
    settings = {"benchmark": "amc23", "template": "deepseek-math", "decoding": {"n": 3}, "scorer": "math",
                "aggregation": "samples", "problems": 2}
    (out / "math" / "amc23.settings.json").write_text(json.dumps(settings))
    with pytest.raises(suites.SuiteError, match="records other settings"):
        _run(tiny, out, benchmarks=["amc23"])


def test_cli_suite_on_the_smoke_base_model_then_rescore(tmp_path):
    """evaluate --suite figfont --base on the smoke config, then --rescore: the same report, no model."""
    from configs import nll

    config = nll.get_config("smoke")
    (report,) = suites.evaluate_run_suite(suite="figfont", config=config, base=True, out_dir=tmp_path, num_eval=3,
                                          progress=False)
    assert report["complete"] and report["benchmarks"]["figfont"]["scored"] == 3
    assert set(report["mean"]) == {"exact_match", "case_insensitive", "jaro_winkler"}
    written = (tmp_path / "base" / "figfont" / "report.json").read_bytes()
    (rescored,) = suites.evaluate_run_suite(suite="figfont", config=None, workdir=tmp_path, base=True,
                                            out_dir=tmp_path, rescore=True)
    assert rescored == report and (tmp_path / "base" / "figfont" / "report.json").read_bytes() == written
