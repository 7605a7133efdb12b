"""Every published table that has its raw output committed, recomputed from it; and any script's raw JSON as Markdown.

    python -m experiments.tables             # print every generated block
    python -m experiments.tables --write     # rewrite the docs' generated blocks (and the continuum's files)
    python -m experiments.tables --check     # exit 1 when a doc's block or a continuum file differs
    python -m experiments.tables --render experiments/results/noise_gates/step0.json   # one raw file's tables

The docs hold generated tables between `<!-- BEGIN GENERATED: <name> -->` and `<!-- END GENERATED -->`
markers (experiments/continuum/verdicts.py's mechanism and its `replace_blocks`): the `table-*` blocks are
this module's, from the raw JSON under experiments/results/; every other block is the continuum's
(`verdicts.expected_files`, from experiments/continuum/results/), so one command checks both. A raw file is
what a script's `--json PATH` writes (experiments/raw.py: script, settings, figures, machine); `--render`
turns any of them into the script's tables, so a rerun benchmark's table is one command away. Which
published figure comes from which script and raw file: docs/results/README.md.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from collections.abc import Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import compile_table, raw, study_verdicts  # noqa: E402
from experiments.continuum import verdicts  # noqa: E402

PRIOR = pathlib.Path("experiments/results/prior/prior.json")
NOISE_GATES = pathlib.Path("experiments/results/noise_gates/step0.json")
PACKING = pathlib.Path("experiments/results/bench_data/packing.json")
INITIAL_GATES = pathlib.Path("experiments/results/initial_gates/initial.json")
STUDY = pathlib.Path("experiments/results/study/2026-12-06.json")
NOISE_GATES_TRAINED = pathlib.Path("experiments/results/noise_gates/trained-2026-12-06.json")
COMPILE_EVAL = pathlib.Path("experiments/results/compile_eval")
COMPILE_TABLE = pathlib.Path("experiments/results/compile_table")
COMPARE = pathlib.Path("experiments/results/compare_runlocal")
COMPARE_ROWS = (("base (no fine-tuning)", "base.json"), ("NLL", "nll_step_12.json"), ("−p", "prob_step_12.json"),
                ("DEFT", "deft_step_12.json"))
CONTINUUM_RESULTS = pathlib.Path("experiments/continuum/results")
BENCHMARKS_PAGE = pathlib.Path("docs/results/2026-12-benchmarks.md")
# generated block -> the raw file it renders whole (machine line + the script's tables: `render`)
RENDERED = {f"table-{name.replace('_', '-')}": pathlib.Path(f"experiments/results/{name}/2026-12-04.json")
            for name in ("bench_generate", "bench_data", "bench_sampler", "profile_train_step", "bench_objectives",
                         "bench_train")}
# every raw input of the `table-*` blocks (relative to the root): files, and folders read whole
RAW_FILES = (PRIOR, NOISE_GATES, NOISE_GATES_TRAINED, PACKING, INITIAL_GATES, STUDY, *RENDERED.values())
RAW_FOLDERS = (COMPARE, COMPILE_EVAL, COMPILE_TABLE)
# doc (relative to the root) -> the generated blocks it must hold
DOCS = {
    pathlib.Path("experiments/prior.md"): ("table-prior",),
    pathlib.Path("experiments/noise_gates.md"): ("table-noise-gates",),
    pathlib.Path("experiments/noise_gates_trained.md"): ("table-noise-gates-trained",),
    pathlib.Path("experiments/README.md"): ("table-prior", "table-noise-gates-study", "table-initial-gates",
                                            "table-study-continuum", "table-study-seeds", "table-study-noise",
                                            "table-study-step0-gates", "table-study-trained-gates",
                                            "table-study-paper"),
    pathlib.Path("docs/results/2026-11-studies.md"): ("table-study-paper",),
    pathlib.Path("docs/results/2026-12-continuum.md"): ("readme-accuracy", "readme-claims"),
    pathlib.Path("README.md"): ("table-compare-runlocal", "table-study-readme"),
    pathlib.Path("docs/results/2026-11-amd-epyc.md"): ("table-packing",),
    BENCHMARKS_PAGE: tuple(RENDERED),
    pathlib.Path("docs/results/2026-12-inference.md"): ("table-compile-eval",),
    pathlib.Path("docs/results/2026-12-tpu-compile.md"): ("table-compile-train",),
}


# ------------------------------------------------------------------------------------------------ tables

def prior_table(tasks: Mapping[str, Mapping]) -> str:
    """The published prior table (experiments/measure_prior.py's first output format), tasks by mean p."""
    lines = ["| task | mean p (token mean) | mean p (example mean, first 8) | NLL | examples | tokens/example (mean, max) |",
             "|---|---|---|---|---|---|"]
    for name, r in sorted(tasks.items(), key=lambda item: item[1]["mean_p"]):
        lines.append(f"| {name} | {r['mean_p']:.3f} | {r['example_mean_p_first8']:.3f} | {r['nll']:.3f} | "
                     f"{r['examples']} | {r['mean_length']:.0f}, {r['max_length']} |")
    return "\n".join(lines)


def compare_table(reports: Sequence[tuple[str, Mapping]]) -> str:
    """The main command's comparison: per (label, evaluation report), FigFont's generation figures recomputed
    from the saved generations (deft_jax.sweeping.result_cells) and the teacher-forced mean p and NLL."""
    from deft_jax import sweeping

    lines = ["| model | exact match | Jaro-Winkler | mean p (teacher-forced) | NLL |", "|---|---|---|---|---|"]
    for label, report in reports:
        cells = sweeping.result_cells(report)
        lines.append(f"| {label} | {cells['exact_match']:.3f} | {cells['jaro_winkler']:.3f} | {cells['mean_p']:.3f} | "
                     f"{cells['nll']:.2f} |")
    return "\n".join(lines)


def packing_table(figures: Mapping) -> str:
    """bench_data's non-padding fraction (deterministic: it depends on the data and the batching only), per
    task and max length, for each batching."""
    stages = ("rows padded to max_length", "rows padded to buckets", "first-fit packed")
    cells: dict[tuple, dict] = {}
    for r in figures["rows"]:
        if r["stage"].startswith("batch: "):
            cells.setdefault((r["task"], r["max_length"]), {})[r["stage"][len("batch: "):]] = r["non_pad"]
    lines = ["| task | max length | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    lines += [f"| {task} | {length} | " + " | ".join(f"{cell[s]:.3f}" for s in stages) + " |"
              for (task, length), cell in cells.items()]
    return "\n".join(lines)


def noise_gates_study_table(figures: Mapping) -> str:
    """The step-0 noise-gates rows without DFT (its gate is −p's; the full table is experiments/noise_gates.md)."""
    from experiments import noise_gates

    return noise_gates.table([row for row in figures["rows"] if row["objective"] != "dft"])


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ratio(a, b) -> str:
    return "–" if a is None or b is None else f"{a / b:.3f}"


def render_bench_data(figures: Mapping, settings: Mapping) -> str:
    lines = ["| task | max length | stage | examples | seconds | examples/s | tokens/s | non-pad |",
             "|---|---|---|---|---|---|---|---|"]
    for r in figures["rows"]:
        tokens = f"{r['tokens'] / r['seconds']:.0f}" if r.get("tokens") is not None else "–"
        non_pad = f"{r['non_pad']:.3f}" if r.get("non_pad") is not None else "–"
        length = "–" if r["max_length"] is None else str(r["max_length"])
        lines.append(f"| {r['task']} | {length} | {r['stage']} | {r['examples']} | {r['seconds']:.2f} | "
                     f"{r['examples'] / r['seconds']:.0f} | {tokens} | {non_pad} |")
    return "\n".join(lines)


def render_bench_generate(figures: Mapping, settings: Mapping) -> str:
    lines = [f"load {settings['model']}: {figures['load_seconds']:.2f} s", "",
             "| batch | prefill tokens/s (best) | decode tokens/s (best) | decode ms/step (best) | "
             "first call incl. compile (s) |", "|---|---|---|---|---|"]
    for b in figures["batches"]:
        prefill, decode = min(b["prefill_seconds"]), min(b["decode_seconds"])
        lines.append(f"| {b['batch']} | {b['prefill_tokens'] / prefill:.1f} | {b['decode_tokens'] / decode:.1f} | "
                     f"{decode / settings['new_tokens'] * 1e3:.1f} | {b['compile_seconds']:.1f} |")
    return "\n".join(lines)


def render_bench_sampler(figures: Mapping, settings: Mapping) -> str:
    lines = ["| setting | seconds (prefill + decode, best) | new tokens/s | decode ms/step |", "|---|---|---|---|"]
    for s in figures["settings"]:
        name = s["name"]
        best = min(s["runs"], key=lambda run: run["seconds"])
        step = best["decode_seconds_per_step"]
        lines.append(f"| {name} | {best['seconds']:.2f} | {s['rows'] * settings['new_tokens'] / best['seconds']:.1f} | "
                     f"{'–' if step is None else f'{step * 1e3:.1f}'} |")
    return "\n".join(lines)


def render_bench_objectives(figures: Mapping, settings: Mapping) -> str:
    from experiments import bench_objectives

    return (f"tokens {settings['tokens']}, d_model {settings['d_model']}, vocab {settings['vocab']}, chunk "
            f"{settings['chunk_size']}\n\n" + bench_objectives.table(list(figures["rows"])))


def render_bench_train(figures: Mapping, settings: Mapping) -> str:
    lines = ["| objective, loss impl | compile + first step (s) | s/step: median (rounds) | tokens/s | MFU | "
             "vs NLL, same impl | vs naive | tokens/s vs torch NLL |", "|---|---|---|---|---|---|---|---|"]
    for c in figures["cases"]:
        rounds = ", ".join(f"{r:.2f}" for r in c["rounds"])
        torch = "–" if c.get("speed_vs_torch_nll") is None else f"{c['speed_vs_torch_nll']:.2f}×"
        lines.append(f"| {c['objective']} {c['impl']} | {c['first_s']:.1f} | {c['seconds_per_step']:.2f} ({rounds}) | "
                     f"{c['tokens_per_second']:.0f} | {c['mfu']:.0%} | "
                     f"{'–' if c.get('vs_nll') is None else format(c['vs_nll'], '.3f')} | "
                     f"{'–' if c.get('vs_naive') is None else format(c['vs_naive'], '.3f')} | {torch} |")
    out = "\n".join(lines)
    if figures.get("checkpoint"):
        c = figures["checkpoint"]
        out += (f"\n\ncheckpoint (params + AdamW moments, {c['bytes'] / 2**30:.2f} GiB): save blocks "
                f"{c['save_blocking_s']:.2f} s, written in {c['save_total_s']:.2f} s; restore {c['restore_s']:.2f} s; "
                f"bit-exact {c['bit_exact']}")
    return out


def render_profile_train_step(figures: Mapping, settings: Mapping) -> str:
    lines = ["| phase | XLA options | s: median (rounds) |", "|---|---|---|"]
    for p in figures["phases"]:
        median = _median(p["rounds"])
        rate = (f", {figures['matmul_flops_per_step'] / median / 1e9:.0f} GFLOP/s" if p["phase"] == "matmuls" else "")
        lines.append(f"| {p['phase']} | {p['xla']} | {median:.3f} ({', '.join(f'{r:.3f}' for r in p['rounds'])}"
                     f"){rate} |")
    out = "\n".join(lines)
    if figures.get("op_seconds"):
        total = sum(figures["op_seconds"].values())
        out += "\n\n| op kind (one traced step) | s (thread time) | share |\n|---|---|---|\n" + "\n".join(
            f"| {kind} | {value:.2f} | {value / total:.0%} |"
            for kind, value in sorted(figures["op_seconds"].items(), key=lambda item: -item[1]))
    return out


def render_measure_prior(figures: Mapping, settings: Mapping) -> str:
    from experiments import measure_prior

    return measure_prior.format_table(figures["tasks"], model=figures["model"], num=settings["num"])


def render_noise_gates(figures: Mapping, settings: Mapping) -> str:
    from experiments import noise_gates

    return noise_gates.document(figures).rstrip("\n")


def render_study(figures: Mapping, settings: Mapping) -> str:
    from experiments import study

    return "\n\n".join(f"{entry['title']}\n\n{study.markdown_table(entry['rows'])}"
                       for entry in figures["studies"].values())


def compile_eval_table(reports: Sequence[Mapping]) -> str:
    """One row per `deft_jax.compile --programs=prefill,decode --json` report: per-chip GiB of the prefill and
    the decode step, whether both fit, and the decode step's time, tokens/s per chip and the chip-hours of the
    paper's math avg@16 evaluation by the compiler's estimate and by the HBM bound."""
    gib = 2**30
    lines = ["| preset | topology (HBM/chip) | slots | prefill GiB (temps) | decode GiB | KV cache GiB | fits | "
             "decode ms/step: compiler / HBM bound | tokens/s per chip: compiler / HBM | math avg@16 chip-hours: "
             "compiler / HBM |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        prefill, decode = r["programs"]["prefill"]["bytes"], r["programs"]["decode"]["bytes"]
        e = r["evaluation"]
        compiler, hbm = e.get("compiler") or {}, e["hbm"]
        flag = " (unreliable)" if e.get("compiler_problem") else ""

        def both(key, fmt, *, scale=1.0, note=""):
            left = f"{compiler[key] * scale:{fmt}}{note}" if compiler else "–"
            return f"{left} / {hbm[key] * scale:{fmt}}"
        times = both("step_seconds", ".1f", scale=1e3, note=flag)
        rates, hours = both("tokens_per_second_per_chip", ",.0f"), both("chip_hours", ",.1f")
        fits = "yes" if r["programs"]["prefill"]["fits"] and r["programs"]["decode"]["fits"] else "NO"
        decode_total = decode.get("total") or 0  # 0: the compiler refused it (out of HBM)
        lines.append(f"| {r['model']} | {r['topology']} ({r['hbm_capacity_gib']:g}) | {r['decode_slots']} | "
                     f"{prefill['total'] / gib:.2f} ({prefill['temporaries'] / gib:.2f}) | "
                     f"{(f'{decode_total / gib:.2f}' if decode_total else 'out of HBM')} | "
                     f"{decode['parts']['kv_cache'] / gib:.2f} | {fits} | {times} | {rates} | {hours} |")
    return "\n".join(lines)


INITIAL_COLUMNS = (("nll", "NLL"), ("prob", "−p"), ("dft", "DFT"), ("eaft", "EAFT"), ("cayley", "Cayley"),
                   ("deft", "DEFT"), ("deformed_log(α=0.5)", "deformed-log α=0.5"))


def render_figures_initial(figures: Mapping, settings: Mapping) -> str:
    """Mean gate and ‖grad‖ relative to NLL's at step 0, per regime (figures.py --only initial_scatter --json)."""
    lines = ["| regime (tokens, mean p, mean H) | | " + " | ".join(name for _, name in INITIAL_COLUMNS) + " |",
             "|---|---|" + "---|" * len(INITIAL_COLUMNS)]
    order = ("weak", "intermediate", "strong")  # the study's regimes, weak prior first
    for regime in sorted(figures, key=lambda name: (order.index(name) if name in order else len(order), name)):
        row = figures[regime]
        cells = row["objectives"]
        lines.append(f"| {regime} ({row['tokens']}, {row['mean_p']:.3f}, {row['mean_entropy']:.2f}) | mean gate | "
                     + " | ".join(f"{cells[label]['mean_gate']:.3f}" for label, _ in INITIAL_COLUMNS) + " |")
        lines.append("| | ‖grad‖ / NLL's | "
                     + " | ".join(f"{cells[label]['grad_ratio']:.3f}" for label, _ in INITIAL_COLUMNS) + " |")
    return "\n".join(lines)


RENDERERS = {"bench_data": render_bench_data, "bench_generate": render_bench_generate,
             "bench_sampler": render_bench_sampler, "bench_objectives": render_bench_objectives,
             "bench_train": render_bench_train, "profile_train_step": render_profile_train_step,
             "measure_prior": render_measure_prior, "noise_gates": render_noise_gates, "study": render_study,
             "figures_initial": render_figures_initial}


def machine_line(machine: Mapping) -> str:
    load = machine.get("load_average")
    return (f"Machine: {machine.get('cpu_model') or machine.get('processor') or machine.get('machine')}, "
            f"{machine.get('cpu_count')} CPUs, load average {'/'.join(f'{x:.1f}' for x in load) if load else '?'}, "
            f"jax {machine.get('jax')} on {machine.get('backend')}.")


def render(payload: Mapping) -> str:
    """A raw file (experiments/raw.record) as its script's tables, with the machine they were taken on."""
    script = payload.get("script")
    if script not in RENDERERS:
        raise ValueError(f"raw file of script {script!r}: no renderer; known: {sorted(RENDERERS)}")
    return machine_line(payload["machine"]) + "\n\n" + RENDERERS[script](payload["figures"], payload["settings"])


# ------------------------------------------------------------------------------------------------ docs

def own_blocks(root: pathlib.Path) -> dict[str, str]:
    """The `table-*` blocks, from the raw files under `root`."""
    prior = raw.read(root / PRIOR)
    gates = raw.read(root / NOISE_GATES)
    trained = raw.read(root / NOISE_GATES_TRAINED)
    return {"table-prior": prior_table(prior),
            "table-noise-gates": render_noise_gates(gates["figures"], gates["settings"]),
            "table-noise-gates-study": noise_gates_study_table(gates["figures"]),
            "table-noise-gates-trained": render_noise_gates(trained["figures"], trained["settings"]),
            **study_verdicts.blocks(study=raw.read(root / STUDY)["figures"], gates_step0=gates["figures"],
                                    gates_trained=trained["figures"]),
            "table-packing": packing_table(raw.read(root / PACKING)["figures"]),
            "table-compare-runlocal": compare_table([(label, raw.read(root / COMPARE / name))
                                                     for label, name in COMPARE_ROWS]),
            "table-initial-gates": render_figures_initial(raw.read(root / INITIAL_GATES)["figures"], {}),
            "table-compile-train": compile_table.table(root / COMPILE_TABLE),
            "table-compile-eval": compile_eval_table([raw.read(path)
                                                      for path in sorted((root / COMPILE_EVAL).glob("*.json"))]),
            **{name: render(raw.read(root / path)) for name, path in RENDERED.items()}}


def continuum_files(root: pathlib.Path) -> tuple[dict[pathlib.Path, str], dict[str, str]]:
    """The continuum's files and blocks (verdicts.expected_files, from root's continuum results); its files
    only when `root` is this repository (they live at fixed paths here)."""
    files, generated = verdicts.expected_files(root / CONTINUUM_RESULTS)
    return (files if root.resolve() == REPO_ROOT else {}), generated


def expected_files(root: pathlib.Path = REPO_ROOT) -> tuple[dict[pathlib.Path, str], dict[str, str]]:
    """({path: the text it should hold}, every generated block): the continuum's files, and each doc of DOCS
    with every block regenerated (a doc's block missing, or of an unknown name, is an error)."""
    files, continuum = continuum_files(root)
    generated = {**continuum, **own_blocks(root)}
    for relative, names in DOCS.items():
        doc = root / relative
        text = files.get(doc, None)
        text, found = verdicts.replace_blocks(text if text is not None else doc.read_text(), generated)
        missing = sorted(set(names) - set(found))
        if missing:
            raise KeyError(f"{relative}: generated block(s) {missing} missing; add their markers")
        files[doc] = text
    return files, generated


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.tables", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(REPO_ROOT), help="the tree whose docs and raw results to use")
    parser.add_argument("--write", action="store_true", help="rewrite the generated blocks (and continuum files)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated block or file differs")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON", help="print these raw files' tables")
    args = parser.parse_args(argv)
    if args.render:
        for path in args.render:
            try:
                print(f"[{path}]\n{render(raw.read(path))}\n")
            except (OSError, ValueError, KeyError) as error:
                print(f"experiments.tables: {path}: {type(error).__name__}: {error}", file=sys.stderr)
                return 2
        return 0
    try:
        files, generated = expected_files(pathlib.Path(args.root))
    except (OSError, KeyError) as error:
        print(f"experiments.tables: {error}", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    if args.write:
        for path in stale:
            path.write_text(files[path])
        print(f"experiments.tables: rewrote {', '.join(str(p) for p in stale) or 'nothing (all current)'}")
    elif args.check:
        if stale:
            print("experiments.tables: out of date: " + ", ".join(str(p) for p in stale)
                  + "; run python -m experiments.tables --write", file=sys.stderr)
            return 1
        print("experiments.tables: every generated block and file is current")
    else:
        print("\n\n".join(f"[{name}]\n{text}" for name, text in generated.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
