"""The continuum's axes (experiments/continuum/axes.py, axes_run.py): the ambiguity dial measured from generated
data, the fit/generalisation split, the scorer that accepts any valid symbol, retention against the same
base params, and a tiny grid resumed against its uninterrupted run."""
import json
import math
from collections import Counter

import numpy as np
import pytest

from configs import continuum as grid
from experiments.continuum import axes as axes_lib
from experiments.continuum import world as world_lib

WORLD = world_lib.make_world(**grid.WORLD)


def transitions(records, target_tag="f0"):
    """Every (source, next) canonical transition used by the target-map answers of `records`."""
    out = set()
    for r in records:
        tag, start = r["prompt"].split()
        if tag != target_tag:
            continue
        previous = start
        for symbol in r["response"]:
            symbol = axes_lib.CANONICAL.get(symbol, symbol)
            out.add((previous, symbol))
            previous = symbol
    return out


def test_the_dial_moves_the_measured_ambiguity_monotonically():
    dial = (0.0, 0.25, 0.5, 0.75)
    measured, entropy, reference = [], [], []
    for a in dial:
        axes = axes_lib.make_axes(WORLD, ambiguity=a)
        records = axes_lib.sft_records(axes, count=256, seed=0)
        found = axes_lib.measured_ambiguity(records)
        measured.append(found["ambiguous_fraction"])
        entropy.append(found["conditional_entropy_bits"])
        # Independent reference: the answer positions whose canonical symbol has an alias in this world.
        canonical = [WORLD.target(r["prompt"].split()[1]) for r in records]
        reference.append(np.mean([c in axes.ambiguous for answer in canonical for c in answer]))
    assert measured[0] == 0.0 and entropy[0] == 0.0
    assert all(b > a for a, b in zip(measured, measured[1:])), measured
    assert all(b > a for a, b in zip(entropy, entropy[1:])), entropy
    np.testing.assert_allclose(measured, reference, atol=1e-12)
    # Uniform SFT labels: an ambiguous position is one bit; the entropy is the ambiguous fraction in bits.
    np.testing.assert_allclose(entropy, measured, atol=0.02)
    # The dial's ambiguous sets are nested.
    sets = [axes_lib.ambiguous_symbols(ambiguity=a) for a in dial]
    assert all(s <= t for s, t in zip(sets, sets[1:])) and len(sets[-1]) == 24


def test_pretraining_writes_the_preferred_symbol_and_sft_labels_pick_uniformly():
    axes = axes_lib.make_axes(WORLD, ambiguity=0.5)
    pre = axes_lib.pretraining_records(axes, x=1.0, count=2000, seed=3)
    sft = axes_lib.sft_records(axes, count=2000, seed=3)

    def preferred_share(records):
        counts = Counter()
        for r in records:
            clean = WORLD.target(r["prompt"].split()[1])
            for got, want in zip(r["response"], clean):
                if want in axes.ambiguous:
                    assert got in axes.valid(want)
                    counts[got == want] += 1
                else:
                    assert got == want
        return counts[True] / (counts[True] + counts[False])

    assert abs(preferred_share(pre) - axes_lib.PREFERENCE) < 0.02
    assert abs(preferred_share(sft) - 0.5) < 0.02
    # Pretraining's other maps are untouched; its start symbols are world.pretraining_records' draws.
    plain = world_lib.pretraining_records(WORLD, x=1.0, count=2000, seed=3)
    assert [r["prompt"] for r in pre] == [r["prompt"] for r in plain]


def test_generalisation_entries_are_disjoint_from_every_sft_entry_and_transition():
    axes = axes_lib.make_axes(WORLD, ambiguity=0.25)
    sft = [r for seed in range(5) for r in axes_lib.sft_records(axes, count=256, seed=seed)]
    sets = axes_lib.eval_sets(axes)
    starts = {r["prompt"].split()[1] for r in sft}
    assert starts == set(axes.fit_starts) and len(axes.fit_starts) == axes_lib.FIT_ENTRIES
    gen_starts = {r["prompt"].split()[1] for r in sets["gen"]}
    assert len(gen_starts) == 8 and not gen_starts & starts
    assert not transitions(sets["gen"]) & transitions(sft)  # nothing SFT shows answers a gen entry
    assert transitions(sets["fit"]) <= transitions(sft)
    assert {r["prompt"].split()[0] for r in sets["retention"]} == {m.tag for m in WORLD.maps[1:]}
    assert len(sets["retention"]) == 32 * (len(WORLD.maps) - 1)


def reference_score(prediction, reference, valid):
    """Textbook position-wise accuracy: position j counts when prediction[j] is one of valid[j]."""
    prediction = prediction.strip()
    hits = sum(1 for j, want in enumerate(reference) if j < len(prediction) and prediction[j] in valid[j])
    return hits / max(len(prediction), len(reference))


def test_the_scorer_accepts_any_valid_symbol_and_nothing_else():
    axes = axes_lib.make_axes(WORLD, ambiguity=0.5)
    rng = np.random.default_rng(0)
    for start in world_lib.ALPHABET:
        reference = WORLD.target(start)
        valid = [axes.valid(c) for c in reference]
        every_alternative = "".join(v[-1] for v in valid)
        assert axes_lib.score(prediction=every_alternative, reference=reference, axes=axes) == 1.0
        wrong_alias = "".join(axes_lib.ALIAS[c] for c in reference)  # aliases of unambiguous symbols are wrong
        assert axes_lib.score(prediction=wrong_alias, reference=reference, axes=axes) == pytest.approx(
            sum(c in axes.ambiguous for c in reference) / len(reference))
        for _ in range(5):
            pool = list(world_lib.ALPHABET + axes_lib.ALIASES)
            guess = "".join(rng.choice(pool) if rng.random() < 0.5 else rng.choice(v)
                            for v in valid)[: rng.integers(4, 11)]
            assert axes_lib.score(prediction=guess, reference=reference, axes=axes) == pytest.approx(
                reference_score(guess, reference, valid))
    plain = axes_lib.make_axes(WORLD, ambiguity=0.0)  # no ambiguity: the continuum's character accuracy
    for guess in ("abcdefgh", "ab", "", "abcdefghij"):
        assert axes_lib.score(prediction=guess, reference="abcxefgh", axes=plain) == world_lib.char_accuracy(
            prediction=guess, reference="abcxefgh")


def test_new_random_streams_are_independent_of_every_other_purpose():
    new = ("ambiguous", "pretrain_choice", "sft_choice")
    assert set(new) <= set(world_lib.PURPOSES) and len(set(world_lib.PURPOSES.values())) == len(world_lib.PURPOSES)
    for seed in range(5):
        draws = {p: tuple(world_lib.stream(p, seed).integers(0, 2**32, size=8).tolist()) for p in world_lib.PURPOSES}
        assert len(set(draws.values())) == len(draws), seed
    # The SFT label choices of seed s are not pretraining level s's choices.
    axes = axes_lib.make_axes(WORLD, ambiguity=0.5)
    for seed in range(1, 5):
        a = world_lib.stream("pretrain_choice", seed).random(64)
        b = world_lib.stream("sft_choice", seed).random(64)
        assert not np.allclose(a, b)


def test_config_paths_share_level_zero_and_chain_the_rest_per_ambiguity():
    from configs import continuum_axes as axes_grid

    pre0 = axes_grid.get_config("stage=pretrain,level=0,root=/tmp/r,ambiguity=0.5")
    assert pre0.model.init_from == "" and pre0.data.path.endswith("pretrain-level0.jsonl")
    pre1 = axes_grid.get_config("stage=pretrain,level=1,root=/tmp/r,ambiguity=0.5")
    assert pre1.model.init_from == "/tmp/r/pretrain/level0"
    pre2 = axes_grid.get_config("stage=pretrain,level=2,root=/tmp/r,ambiguity=0.5")
    assert pre2.model.init_from == "/tmp/r/pretrain/amb0.5/level1"
    sft = axes_grid.get_config("stage=sft,level=2,root=/tmp/r,ambiguity=0.25,seed=3,noise=0.2,objective=prob")
    assert sft.model.init_from == "/tmp/r/pretrain/amb0.25/level2"
    assert sft.data.path == "/tmp/r/data/sft-amb0.25-seed3-noise0.2.jsonl" and sft.optim.lr == axes_grid.SFT_LR
    with pytest.raises(ValueError, match="ambiguity=2"):
        axes_grid.get_config("ambiguity=2")
    runs = axes_grid.sweep()
    assert len(runs) == (len(axes_grid.LEVELS) * len(axes_grid.AMBIGUITY) * len(axes_grid.NOISE)
                         * len(axes_grid.SEEDS) * len(axes_grid.GRID_OBJECTIVES))


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    from experiments.continuum import axes_run

    root = tmp_path_factory.mktemp("axes")
    args = ["--workdir", str(root), "--smoke", "--objectives", "nll"]
    assert axes_run.main(args) == 0
    return root, args


@pytest.mark.slow
def test_retention_is_measured_against_the_same_base_params(tiny_grid):
    from configs import continuum_axes as axes_grid
    from deft_jax.training import checkpointing
    from deft_jax.training import setup as build
    from experiments.continuum import axes_run

    root, _ = tiny_grid
    results = [json.loads(p.read_text()) for p in sorted((root / "sft").glob("*/result.json"))]
    assert len(results) == 4  # levels 0, 1 x ambiguity 0, 0.5, NLL, seed 0
    for result in results:
        where = axes_grid.paths(root=str(root), level=result["level"], seed=0, noise=0.0,
                                ambiguity=result["ambiguity"])
        base = json.loads((where["pretrain_run"] / f"base-{axes_grid.amb_name(result['ambiguity'])}.json").read_text())
        # The base report and the SFT run fingerprint the same params: the pretraining checkpoint's.
        config = axes_grid.get_config(f"stage=sft,level={result['level']},ambiguity={result['ambiguity']},"
                                      f"root={root},smoke")
        setup = build.setup(config, mesh_fallback=True)
        restored = setup.restore_params(workdir=where["pretrain_run"],
                                        step=checkpointing.available_steps(where["pretrain_run"])[-1])
        assert result["base_fingerprint"] == base["fingerprint"] == axes_run.fingerprint(restored)
    # Different (level, ambiguity) bases are different params (a fingerprint that can fail).
    assert len({r["base_fingerprint"] for r in results if r["ambiguity"] == 0.5}) == 2


@pytest.mark.slow
def test_a_resumed_grid_matches_its_uninterrupted_run(tiny_grid):
    from experiments.continuum import axes_run

    root, args = tiny_grid
    done = sorted((root / "sft").glob("*/result.json"))
    before = {p: json.loads(p.read_text()) for p in done}
    stamps = {p: p.stat().st_mtime_ns for p in done}
    removed = done[1]
    removed.unlink()
    assert axes_run.main(args) == 0
    assert all(p.stat().st_mtime_ns == stamps[p] for p in done if p != removed)  # finished runs are skipped
    again = json.loads(removed.read_text())
    for name in ("fit", "gen", "retention"):
        assert again["scores"][name]["accuracy"] == before[removed]["scores"][name]["accuracy"]
    assert again["dynamics"]["loss"] == pytest.approx(before[removed]["dynamics"]["loss"], rel=1e-6)
    assert again["base_fingerprint"] == before[removed]["base_fingerprint"]


def test_a_published_cell_is_recomputed_from_the_raw_results():
    from experiments.continuum import axes_verdicts

    results, bases = axes_verdicts.load()
    base = [b for b in bases if (b["level"], b["ambiguity"]) == (4, 0.0)]
    assert len(base) == 1
    runs = [r for r in results if (r["level"], r["ambiguity"], r["noise"], r["label"]) == (4, 0.0, 0.0, "nll")]
    assert len(runs) == 5 and {r["base_fingerprint"] for r in runs} == {base[0]["fingerprint"]}
    for score in ("fit", "gen", "retention"):
        change = np.array([r["scores"][score]["accuracy"] for r in runs]) - base[0]["scores"][score]["accuracy"]
        half = 2.776 * change.std(ddof=1) / math.sqrt(5)
        text = (axes_verdicts.RESULTS / "axes.md").read_text()
        section = text[text.index(f"## {axes_verdicts.SCORES[score]}: change from the base model, noise 0\n"):]
        row = [line for line in section.splitlines() if line.startswith("| 4, 0 (")][0]
        assert f"{change.mean():.3f} ± {half:.3f}" in row, (score, row)


def fake_axes(*, lead: float):
    """Two cells (a strong and an intermediate level), five seeds: −p above NLL by `lead` ± jitter."""
    rng = np.random.default_rng(1)
    bases, results = [], []
    for level, p in ((1, 0.6), (2, 0.9)):
        bases.append({"level": level, "ambiguity": 0.0, "sft_data": {"mean_p": p}, "fingerprint": str(level),
                      "probe": {"ambiguity": 0.1}, "data_ambiguity": {"ambiguous_fraction": 0.0},
                      "scores": {s: {"accuracy": 0.5} for s in ("fit", "gen", "retention")}})
        for seed in range(5):
            common = 0.5 + 0.05 * rng.normal()
            for label, value in (("nll", common), ("prob", common + lead + 0.002 * rng.normal()),
                                 ("deft", common - 0.2)):
                results.append({"level": level, "ambiguity": 0.0, "noise": 0.0, "seed": seed, "label": label,
                                "scores": {s: {"accuracy": value} for s in ("fit", "gen", "retention")}})
    return results, bases


def test_the_verdict_rules_on_a_made_up_study_with_a_known_answer():
    from experiments.continuum import axes_verdicts

    for lead, status in ((0.1, "holds"), (-0.1, "fails"), (0.0, "unresolved")):
        study = axes_verdicts.Axes(*fake_axes(lead=lead))
        found = {v["id"]: v for v in axes_verdicts.verdicts(study)}
        assert found["prob-over-nll-unambiguous-gen-noise0"]["status"] == status, lead
        family = found["prob-over-nll-unambiguous-gen-noise0"]["family"]
        assert len(family) == 2 and {c["level"] for c in family} == {1, 2}
    study = axes_verdicts.Axes(*fake_axes(lead=0.1))
    found = {v["id"]: v for v in axes_verdicts.verdicts(study)}
    # −p leads everyone at the strong cell (level 2, p 0.9): 2 comparisons, both resolved.
    assert found["prob-best-strong-fit-noise0"]["status"] == "holds"
    assert len(found["prob-best-strong-fit-noise0"]["family"]) == 2
    won = axes_verdicts.winners(study)["0"]["fit"]["2,0"]
    assert won["best"] == "prob" and won["ahead_of_all"] and set(won["behind"]) == {"nll", "deft"}
