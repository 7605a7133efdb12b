"""Benchmark suites: the paper's evaluation protocol as declarative entries, run, saved, resumed, rescored.

A suite is a list of `Benchmark` entries; each names its source (a JSONL/Parquet file under --data_dir with
configurable fields, or reasoning-gym items), its prompt template, its decoding, its scorer and its
aggregation. Adding a benchmark means adding an entry to BENCHMARKS.

  math     MATH-500, Minerva math, OlympiadBench, AIME24, AMC23. Template qwen-boxed (also
           llama-base-boxed-with-bos, deepseek-math); temperature 1.0, top-p 1.0, n = 16, at most 4,096
           new tokens, seed 0; the last \\boxed{} checked by math-verify; acc (sample 0), mean_acc
           (avg@n), pass@k.
  medical  multiple choice (question, options, answer letter, source); greedy; the option letter from
           \\boxed{} or an option-letter phrase; accuracy per source, then the mean over sources.
  figfont  reasoning-gym figlet_font test items 40,000-44,999; greedy, at most 5 new tokens; exact match,
           case-insensitive match and Jaro-Winkler (lowercased, stripped).

Every generation is appended to <out_dir>/<suite>/<benchmark>.generations.jsonl as soon as its batch is
done (prompt_id, sample_index, text, stop_reason, num_tokens), beside <benchmark>.problems.jsonl (the
prompts' references and sources) and <benchmark>.settings.json. A rerun with the same settings generates only
the prompts that lack samples; `rescore_suite` recomputes the report from these files alone (no model), and
the report of a run is itself computed from the saved files, so both agree bit for bit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from deft_jax import errors, reporting, sharding
from deft_jax.data import FIGFONT_SYSTEM_PROMPT, sources, tasks
from deft_jax.evaluation import aggregation, scoring
from deft_jax.inference import sampler
from deft_jax.training import checkpointing
from deft_jax.training import setup as build

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Answer with the letter of the correct option, and put it within \\boxed{}."


class SuiteError(errors.UserError):
    """Bad suite input (unknown name, missing file or field, inconsistent saved run); says what to do."""


# ====================================================================================================
# Declarative entries.

@dataclasses.dataclass(frozen=True)
class Decoding:
    """temperature 0 = greedy (then n = 1); seed keys every sample (see deft_jax.sampler)."""

    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    max_new_tokens: int = 4096
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark. Source: `file` under the data dir (JSONL or Parquet by suffix) with the fields
    named below, or `reasoning_gym` items [start, start + count). The reference answer is the
    `answer_field` value ('value'), its first element ('first', a list field) or the last \\boxed{} of it
    ('boxed', a worked solution)."""

    name: str
    suite: str
    template: str
    decoding: Decoding
    scorer: str                      # key of SCORERS
    aggregation: str = "samples"     # 'samples' (acc, mean_acc, pass@k) or 'by_source'
    file: str | None = None
    question_field: str = "problem"
    answer_field: str = "answer"
    answer_from: str = "value"       # 'value' | 'first' | 'boxed'
    options_field: str | None = None
    source_field: str | None = None
    reasoning_gym: Mapping[str, Any] | None = None  # {'task', 'seed', 'start', 'count'}


MATH_DECODING = Decoding(temperature=1.0, top_p=1.0, n=16, max_new_tokens=4096, seed=0)
GREEDY_DECODING = Decoding(temperature=0.0, n=1, max_new_tokens=4096)

BENCHMARKS: tuple[Benchmark, ...] = (
    # Math: the field layouts of the published test files.
    Benchmark("math500", "math", "qwen-boxed", MATH_DECODING, "math", file="math500_test.jsonl",
              question_field="problem", answer_field="answer"),
    Benchmark("minerva", "math", "qwen-boxed", MATH_DECODING, "math", file="minerva_math_test.jsonl",
              question_field="problem", answer_field="solution", answer_from="boxed"),
    Benchmark("olympiadbench", "math", "qwen-boxed", MATH_DECODING, "math", file="olympiadbench_test.jsonl",
              question_field="question", answer_field="final_answer", answer_from="first"),
    Benchmark("aime24", "math", "qwen-boxed", MATH_DECODING, "math", file="aime24_test.jsonl",
              question_field="problem", answer_field="answer"),
    Benchmark("amc23", "math", "qwen-boxed", MATH_DECODING, "math", file="amc23_test.jsonl",
              question_field="question", answer_field="answer"),
    # Medical multiple choice (MedQA-style rows: question, options {letter: text}, answer_idx, source).
    Benchmark("medical", "medical", "chat-choice", GREEDY_DECODING, "multiple_choice", aggregation="by_source",
              file="medical_test.jsonl", question_field="question", answer_field="answer_idx",
              options_field="options", source_field="source"),
    # FigFont: the held-out test range of the training task.
    Benchmark("figfont", "figfont", "figfont-chat", Decoding(temperature=0.0, n=1, max_new_tokens=5), "figfont",
              reasoning_gym={"task": "figfont", "seed": 42, "start": 40_000, "count": 5_000}),
)
SUITES: dict[str, tuple[str, ...]] = {}
for _benchmark in BENCHMARKS:
    SUITES.setdefault(_benchmark.suite, ())
    SUITES[_benchmark.suite] += (_benchmark.name,)


def select_benchmarks(suite: str, names: Sequence[str] | None = None) -> list[Benchmark]:
    """The benchmarks of `suite` (all of them, or those named, in the suite's order)."""
    if suite not in SUITES:
        raise SuiteError(f"unknown suite {suite!r}{errors.did_you_mean(suite, SUITES)}; known: "
                         f"{', '.join(sorted(SUITES))}")
    members = SUITES[suite]
    for name in names or ():
        if name not in members:
            raise SuiteError(f"unknown benchmark {name!r} of suite {suite!r}{errors.did_you_mean(name, members)}; "
                             f"known: {', '.join(members)}")
    by_name = {b.name: b for b in BENCHMARKS}
    return [by_name[name] for name in members if not names or name in names]


# ====================================================================================================
# Prompt templates.

def _qwen_boxed(question: str, tokenizer) -> str:
    return (f"<|im_start|>system\n{BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def _llama_base_boxed_with_bos(question: str, tokenizer) -> str:
    bos = tokenizer.bos_token or ""
    return f"{bos}Question: {question}\n{BOXED_INSTRUCTION}\nAnswer: "


def _deepseek_math(question: str, tokenizer) -> str:
    return f"User: {question}\n{BOXED_INSTRUCTION}\n\nAssistant:"


def _chat_boxed(question: str, tokenizer) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": f"{question}\n{BOXED_INSTRUCTION}"}])


def _chat_choice(question: str, tokenizer) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": f"{question}\n\n{CHOICE_INSTRUCTION}"}])


def _figfont_chat(question: str, tokenizer) -> str:

    return tokenizer.apply_chat_template([{"role": "system", "content": FIGFONT_SYSTEM_PROMPT},
                                          {"role": "user", "content": question}])


# name -> (question, tokenizer) -> prompt text. Special tokens in the text (ChatML markers, a BOS) are
# encoded as the tokenizer's special tokens.
TEMPLATES: dict[str, Callable[[str, Any], str]] = {
    "qwen-boxed": _qwen_boxed,
    "llama-base-boxed-with-bos": _llama_base_boxed_with_bos,
    "deepseek-math": _deepseek_math,
    "chat-boxed": _chat_boxed,
    "chat-choice": _chat_choice,
    "figfont-chat": _figfont_chat,
}


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise SuiteError(f"unknown prompt template {name!r}{errors.did_you_mean(name, TEMPLATES)}; known: "
                         f"{', '.join(sorted(TEMPLATES))}")
    return name


# ====================================================================================================
# Problems.

@dataclasses.dataclass(frozen=True)
class Problem:
    prompt_id: int
    question: str        # the user turn (options included for multiple choice)
    reference: str
    source: str          # the group for 'by_source' aggregation
    where: str           # file:line (or the reasoning-gym item)


def _reference(fields: Mapping[str, Any], benchmark: Benchmark, where: str) -> str:
    if benchmark.answer_field not in fields or fields[benchmark.answer_field] in (None, "", []):
        raise SuiteError(f"{where}: record has no {benchmark.answer_field!r} (the {benchmark.name} answer field); "
                         f"fields present: {sorted(fields)}")
    value = fields[benchmark.answer_field]
    if benchmark.answer_from == "first":
        value = value[0] if isinstance(value, (list, tuple)) else value
    if benchmark.answer_from == "boxed":
        boxed = tasks.last_boxed(str(value))
        if boxed is None:
            raise SuiteError(f"{where}: field {benchmark.answer_field!r} has no \\boxed{{}} answer to extract")
        value = boxed
    return str(value)


def _choice_question(fields: Mapping[str, Any], benchmark: Benchmark, where: str) -> str:
    options = fields.get(benchmark.options_field)
    if isinstance(options, (list, tuple)):
        options = {chr(ord("A") + i): text for i, text in enumerate(options)}
    if not isinstance(options, Mapping) or not options:
        raise SuiteError(f"{where}: field {benchmark.options_field!r} must map option letters to texts "
                         f"(or list them), got {type(options).__name__}")
    lines = "\n".join(f"{letter}. {text}" for letter, text in sorted(options.items()))
    return f"{fields[benchmark.question_field]}\n\n{lines}"


def load_problems(benchmark: Benchmark, *, data_dir: str | os.PathLike | None, num_eval: int | None) -> list[Problem]:
    """The first `num_eval` problems (all when None) of a benchmark, prompt ids 0, 1, ..."""
    if num_eval is not None and num_eval < 1:
        raise SuiteError(f"num_eval={num_eval}: must be >= 1")
    if benchmark.reasoning_gym is not None:

        spec = benchmark.reasoning_gym
        count = spec["count"] if num_eval is None else min(num_eval, spec["count"])
        examples = tasks.reasoning_gym_examples(task=spec["task"], seed=spec["seed"], start=spec["start"],
                                                count=count, kwargs=tasks.dataset_kwargs(task=spec["task"], overrides={}))
        return [Problem(i, e.messages[-1]["content"], str(e.reference), benchmark.name, e.source)
                for i, e in enumerate(examples)]

    if data_dir is None:
        raise SuiteError(f"benchmark {benchmark.name!r} reads {benchmark.file} from --data_dir; pass --data_dir")
    path = pathlib.Path(data_dir) / benchmark.file
    if not path.is_file():
        raise SuiteError(f"benchmark {benchmark.name!r}: {path} does not exist; put the {benchmark.name} test file "
                         f"there (fields {benchmark.question_field!r}, {benchmark.answer_field!r}) or choose "
                         f"--benchmarks among those present")
    records = sources.read_file(path)
    if num_eval is not None:
        records = records[:num_eval]
    problems = []
    for i, record in enumerate(records):
        fields, where = record.fields, record.source
        if not isinstance(fields.get(benchmark.question_field), str) or not fields[benchmark.question_field].strip():
            raise SuiteError(f"{where}: record has no {benchmark.question_field!r} text (the {benchmark.name} "
                             f"question field); fields present: {sorted(fields)}")
        question = _choice_question(fields, benchmark, where) if benchmark.options_field else \
            fields[benchmark.question_field]
        source = benchmark.name
        if benchmark.source_field is not None:
            if benchmark.source_field not in fields:
                raise SuiteError(f"{where}: record has no {benchmark.source_field!r} (the source field)")
            source = str(fields[benchmark.source_field])
        problems.append(Problem(i, question, _reference(fields, benchmark, where), source, where))
    return problems


# ====================================================================================================
# Scorers and aggregation.

def _math_scores(prediction: str, reference: str) -> dict[str, float]:
    return {"correct": scoring.math_score(prediction=prediction, reference=reference)}


def _choice_scores(prediction: str, reference: str) -> dict[str, float]:
    return {"correct": scoring.multiple_choice_score(prediction=prediction, reference=reference)}


def _figfont_scores(prediction: str, reference: str) -> dict[str, float]:
    return scoring.figfont_metrics(prediction=prediction, reference=reference)


# name -> (prediction, reference) -> {metric: score in [0, 1]}; the first metric is the headline.
SCORERS: dict[str, Callable[[str, str], dict[str, float]]] = {
    "math": _math_scores,
    "multiple_choice": _choice_scores,
    "figfont": _figfont_scores,
}


def aggregate(benchmark: Benchmark, problems: Sequence[Problem], samples: Mapping[int, Sequence[str]]) -> dict[str, float]:
    """The benchmark's figures from samples[prompt_id] = texts in sample order (every problem present)."""
    scorer = SCORERS[benchmark.scorer]
    per_problem = [[scorer(text, problem.reference) for text in samples[problem.prompt_id]] for problem in problems]
    metrics = list(per_problem[0][0])
    figures: dict[str, float] = {}
    for metric in metrics:
        scores = [[sample[metric] for sample in row] for row in per_problem]
        if benchmark.aggregation == "by_source":
            mean, per_source = aggregation.mean_over_groups([row[0] for row in scores],
                                                            groups=[p.source for p in problems])
            figures[metric] = mean
            figures.update({f"{metric}/{source}": value for source, value in per_source.items()})
        elif len(scores[0]) == 1 and metric != "correct":
            figures[metric] = math.fsum(row[0] for row in scores) / len(scores)
        else:
            named = aggregation.sample_metrics(scores)
            prefix = "" if metric == "correct" else f"{metric}/"
            figures.update({prefix + key: value for key, value in named.items()})
    return figures


# ====================================================================================================
# Saved generations.

def _paths(out_dir: pathlib.Path, benchmark: Benchmark) -> dict[str, pathlib.Path]:
    return {kind: out_dir / f"{benchmark.name}.{kind}" for kind in
            ("generations.jsonl", "problems.jsonl", "settings.json")}


def _settings(benchmark: Benchmark, decoding: Decoding, template: str, num_problems: int) -> dict[str, Any]:
    return {"benchmark": benchmark.name, "template": template, "decoding": dataclasses.asdict(decoding),
            "scorer": benchmark.scorer, "aggregation": benchmark.aggregation, "problems": num_problems}


def read_generations(path: pathlib.Path) -> dict[int, dict[int, dict[str, Any]]]:
    """{prompt_id: {sample_index: record}} of a generations file; a torn last line (a kill mid-write) is
    ignored, any other bad line is an error naming file:line."""
    found: dict[int, dict[int, dict[str, Any]]] = {}
    if not path.is_file():
        return found
    lines = path.read_text().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated last line of an interrupted write
                continue
            raise SuiteError(f"{path}:{number}: malformed generation record; delete the file to regenerate") from None
        found.setdefault(int(record["prompt_id"]), {})[int(record["sample_index"])] = record
    return found


def _complete(saved: Mapping[int, Mapping[int, Any]], problems: Sequence[Problem], n: int) -> list[Problem]:
    return [p for p in problems if len(saved.get(p.prompt_id, {})) >= n]


# ====================================================================================================
# Reports.

def benchmark_report(benchmark: Benchmark, *, out_dir: pathlib.Path) -> dict[str, Any]:
    """Figures of one benchmark from its saved files (marked incomplete when samples are missing)."""
    paths = _paths(out_dir, benchmark)
    if not paths["settings.json"].is_file():
        raise SuiteError(f"{paths['settings.json']} not found: {benchmark.name} has not been run into {out_dir}")
    settings = json.loads(paths["settings.json"].read_text())
    problems = [Problem(**json.loads(line)) for line in paths["problems.jsonl"].read_text().splitlines() if line]
    n = settings["decoding"]["n"]
    saved = read_generations(paths["generations.jsonl"])
    done = _complete(saved, problems, n)
    report = {"settings": settings, "problems": len(problems), "scored": len(done),
              "complete": len(done) == len(problems)}
    if done:
        texts = {p.prompt_id: [saved[p.prompt_id][j]["text"] for j in range(n)] for p in done}
        report["figures"] = aggregate(benchmark, done, texts)
        tokens = [saved[p.prompt_id][j]["num_tokens"] for p in done for j in range(n)]
        report["mean_new_tokens"] = math.fsum(tokens) / len(tokens)
    return report


def suite_report(suite: str, benchmarks: Sequence[Benchmark], *, out_dir: pathlib.Path) -> dict[str, Any]:
    """Per-benchmark figures and their mean over benchmarks (complete only when every benchmark is)."""
    reports = {b.name: benchmark_report(b, out_dir=out_dir) for b in benchmarks}
    complete = all(r["complete"] for r in reports.values())
    figures = [r.get("figures", {}) for r in reports.values()]
    return {"suite": suite, "complete": complete, "benchmarks": reports,
            "mean": aggregation.mean_of(figures) if complete else {}}


def markdown_report(report: Mapping[str, Any]) -> str:
    """A table: one row per benchmark and the suite mean; columns are the figures."""
    rows = {name: r.get("figures", {}) for name, r in report["benchmarks"].items()}
    if report["mean"]:
        rows["mean"] = report["mean"]
    columns = list(dict.fromkeys(key for figures in rows.values() for key in figures if "/" not in key))
    columns += sorted({key for figures in rows.values() for key in figures if "/" in key})
    status = "complete" if report["complete"] else "INCOMPLETE (some prompts lack samples; rerun to resume)"
    lines = [f"# Suite `{report['suite']}`: {status}", "",
             "| benchmark | scored | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, figures in rows.items():
        detail = report["benchmarks"].get(name)
        scored = f"{detail['scored']}/{detail['problems']}" if detail else ""
        cells = [f"{figures[c]:.4f}" if c in figures else "–" for c in columns]
        lines.append(f"| {name} | {scored} | " + " | ".join(cells) + " |")
    settings = [f"- {name}: template `{r['settings']['template']}`, decoding {r['settings']['decoding']}"
                for name, r in report["benchmarks"].items()]
    return "\n".join(lines + [""] + settings) + "\n"


def write_report(report: Mapping[str, Any], *, out_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """<out_dir>/report.json and report.md."""
    paths = (out_dir / "report.json", out_dir / "report.md")
    reporting.write_text(paths[0], json.dumps(report, indent=2, sort_keys=True) + "\n")
    reporting.write_text(paths[1], markdown_report(report))
    return paths


def rescore_suite(*, suite: str, benchmarks: Sequence[str] | None, out_dir: str | os.PathLike) -> dict[str, Any]:
    """The suite report recomputed from <out_dir>/<suite>/ alone (no model, no data), and rewritten."""
    directory = pathlib.Path(out_dir) / suite
    selected = select_benchmarks(suite, benchmarks)
    report = suite_report(suite, selected, out_dir=directory)
    write_report(report, out_dir=directory)
    return report


# ====================================================================================================
# Running.

def resolve_decoding(benchmark: Benchmark, *, n: int | None, max_new_tokens: int | None, seed: int | None) -> Decoding:
    """The benchmark's decoding with the overrides; n applies to sampled benchmarks (greedy ones keep 1)."""
    if n is not None and n < 1:
        raise SuiteError(f"--n={n}: the number of samples per problem must be >= 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise SuiteError(f"--max_new_tokens={max_new_tokens}: must be >= 1")
    decoding = benchmark.decoding
    changes = {}
    if n is not None and not decoding.greedy:
        changes["n"] = n
    if max_new_tokens is not None:
        changes["max_new_tokens"] = max_new_tokens
    if seed is not None:
        changes["seed"] = seed
    return dataclasses.replace(decoding, **changes)


def run_suite(*, params, model_config, tokenizer, suite: str, benchmarks: Sequence[str] | None = None,
              data_dir: str | os.PathLike | None, out_dir: str | os.PathLike, n: int | None = None,
              num_eval: int | None = None, max_new_tokens: int | None = None, seed: int | None = None,
              template: str | None = None, mesh=None, rules=(), max_rows: int = 64, progress: bool = True,
              batching: str = "continuous", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate what is missing for each benchmark of `suite` into <out_dir>/<suite>/, then write and return
    the report (computed from the saved generations, see the module docstring). max_rows: rows decoded
    together (the decode slots with batching='continuous')."""

    directory = pathlib.Path(out_dir) / suite
    writer = jax.process_index() == 0  # every process samples (collectives); process 0 alone writes
    if writer:
        directory.mkdir(parents=True, exist_ok=True)
    selected = select_benchmarks(suite, benchmarks)
    if template is not None:
        check_template(template)
    plans = []
    for benchmark in selected:  # validate every input before generating anything
        decoding = resolve_decoding(benchmark, n=n, max_new_tokens=max_new_tokens, seed=seed)
        name = check_template(template or benchmark.template)
        problems = load_problems(benchmark, data_dir=data_dir, num_eval=num_eval)
        plans.append((benchmark, decoding, name, problems))
    for benchmark, decoding, name, problems in plans:  # every benchmark's settings, before any generation
        paths = _paths(directory, benchmark)
        settings = _settings(benchmark, decoding, name, len(problems))
        if paths["settings.json"].is_file():
            previous = json.loads(paths["settings.json"].read_text())
            if previous != settings:
                raise SuiteError(f"{paths['settings.json']} records other settings ({previous}) than this run "
                                 f"({settings}); pass another --out_dir or delete {directory} to start over")
    for benchmark, decoding, name, problems in plans:
        paths = _paths(directory, benchmark)
        if writer and not paths["settings.json"].is_file():
            reporting.write_text(paths["problems.jsonl"],
                                 "".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in problems))
            reporting.write_text(paths["settings.json"], json.dumps(
                _settings(benchmark, decoding, name, len(problems)), indent=2, sort_keys=True) + "\n")
    # Every process reads the same saved generations (a folder all hosts share), before anything new is
    # written, so all of them sample the same rows.
    sharding.meet(f"suite {suite}: settings written", timeout_seconds=sharding.DEFAULT_INITIALIZATION_TIMEOUT)
    stops = sampler.stop_criteria(tokenizer)
    for benchmark, decoding, name, problems in plans:
        paths = _paths(directory, benchmark)
        saved = read_generations(paths["generations.jsonl"])
        todo = [p for p in problems if len(saved.get(p.prompt_id, {})) < decoding.n]
        log(f"{suite}/{benchmark.name}: {len(problems) - len(todo)} of {len(problems)} problems already "
            f"generated; {len(todo)} to go (n={decoding.n}, template {name})")
        if not todo:
            continue
        requests = [sampler.Request(p.prompt_id, tuple(tokenizer.encode(TEMPLATES[name](p.question, tokenizer))))
                    for p in todo]
        options = sampler.SamplerOptions(
            n=decoding.n, seed=decoding.seed, max_rows=max_rows, batching=batching,
            sampling=sampler.SamplingConfig(max_new_tokens=decoding.max_new_tokens,
                                            temperature=decoding.temperature, top_p=decoding.top_p))
        started = time.perf_counter()
        generated = 0
        with (paths["generations.jsonl"].open("a") if writer else contextlib.nullcontext()) as handle:
            for batch in sampler.sample(params, model_config, requests, options=options, stops=stops,
                                        decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                                        pad_id=tokenizer.pad_id, mesh=mesh, rules=rules, progress=progress,
                                        description=f"{suite}/{benchmark.name}"):
                if writer:
                    handle.write("".join(json.dumps({"prompt_id": s.prompt_id, "sample_index": s.sample_index,
                                                     "text": s.text, "stop_reason": s.stop_reason,
                                                     "num_tokens": s.num_tokens}) + "\n" for s in batch))
                    handle.flush()
                    os.fsync(handle.fileno())
                generated += sum(s.num_tokens for s in batch)
        seconds = time.perf_counter() - started
        log(f"{suite}/{benchmark.name}: {generated} new tokens in {seconds:.1f}s "
            f"({generated / seconds if seconds else float('nan'):.1f} tokens/s, compilation included)")
    sharding.meet(f"suite {suite}: generations written", timeout_seconds=sharding.DEFAULT_INITIALIZATION_TIMEOUT)
    report = suite_report(suite, selected, out_dir=directory)
    if writer:
        write_report(report, out_dir=directory)
    return report


# ====================================================================================================
# A training run's checkpoint (or its base model) through a suite.

def evaluate_run_suite(*, suite: str, benchmarks: Sequence[str] | None = None, workdir=None, config=None,
                       step: str | int | None = None, base: bool = False, data_dir=None, out_dir=None,
                       n: int | None = None, num_eval: int | None = None, max_new_tokens: int | None = None,
                       seed: int | None = None, template: str | None = None, rescore: bool = False,
                       max_rows: int = 64, devices=None, progress: bool = True,
                       batching: str | None = None) -> list[dict[str, Any]]:
    """run_suite (or rescore_suite) for each requested checkpoint of the run in `workdir` (or its base
    model, or the base model of `config`). Reports go to <out_dir>/<base|step_N>/<suite>/, out_dir
    defaulting to <workdir>/eval. --rescore reads only those files: no config, model or data. batching:
    'continuous' or 'static' (default the config's eval.batching)."""
    select_benchmarks(suite, benchmarks)  # names checked before anything is loaded
    if workdir is None and config is None and not (rescore and out_dir is not None):
        raise SuiteError("pass --workdir (a training run) or --config with --base (--rescore: or --out_dir)")
    if out_dir is None:
        if workdir is None:
            raise SuiteError("--suite with --config and no --workdir needs --out_dir for its reports")
        out_dir = pathlib.Path(workdir) / "eval"
    if base:
        steps = [None]
    elif rescore:
        steps = [step if step not in (None, "latest") else None]
        if steps == [None]:
            found = sorted(pathlib.Path(out_dir).glob(f"step_*/{suite}"))
            if not found:
                raise SuiteError(f"--rescore: no saved {suite} generations under {out_dir}; pass --step or --base")
            steps = [int(found[-1].parent.name.removeprefix("step_"))]
    else:
        steps = checkpointing.resolve_steps(workdir=workdir, requested=step)
    if rescore:
        return [rescore_suite(suite=suite, benchmarks=benchmarks,
                              out_dir=pathlib.Path(out_dir) / reporting.report_name(None if s is None else int(s)))
                for s in steps]
    if config is None:
        config = build.load_run_config(workdir)
    sharding.maybe_initialize_distributed(config.distributed)  # several hosts sample one mesh; process 0 writes
    setup = build.setup(config, devices=devices, mesh_fallback=True)
    reports = []
    for one in steps:
        params = setup.initial_params() if one is None else setup.restore_params(workdir=workdir, step=one)
        reports.append(run_suite(params=params, model_config=setup.model_config, tokenizer=setup.tokenizer,
                                 suite=suite, benchmarks=benchmarks, data_dir=data_dir,
                                 out_dir=pathlib.Path(out_dir) / reporting.report_name(one), n=n, num_eval=num_eval,
                                 max_new_tokens=max_new_tokens, seed=seed, template=template, mesh=setup.mesh,
                                 rules=setup.rules, max_rows=max_rows, progress=progress,
                                 batching=batching or setup.config.eval.batching))
        del params
    return reports
