"""The capability continuum (experiments/continuum): the world, the dial, and tables against per-run reports."""
import json
import math

import numpy as np
import pytest

from experiments.continuum import world as world_lib
from deft_jax.training import setup as build
from deft_jax.training import checkpointing


def test_maps_are_single_cycles_and_answers_follow_the_orbit():
    world = world_lib.make_world(num_maps=4, seed=0, length=8)
    assert len({m.successor for m in world.maps}) == 4
    for string_map in world.maps:
        assert sorted(string_map.successor) == sorted(world_lib.ALPHABET)  # a permutation
        table = dict(zip(world_lib.ALPHABET, string_map.successor))
        symbol, seen = "a", []
        for _ in world_lib.ALPHABET:
            symbol = table[symbol]
            seen.append(symbol)
        assert sorted(seen) == sorted(world_lib.ALPHABET)  # one cycle through every symbol
        answer = string_map("c")
        assert answer[0] == table["c"] and all(table[a] == b for a, b in zip(answer, answer[1:]))
        assert len(set(answer)) == len(answer) == 8


def test_corrupt_replaces_exactly_the_fraction_and_keeps_the_clean_answer():
    world = world_lib.make_world(num_maps=4, seed=0, length=8)
    clean = world_lib.target_records(world, count=50, seed=3, stream=1)
    noisy = world_lib.corrupt(clean, fraction=0.2, seed=3)
    wrong = [r for r in noisy if r["corrupted"]]
    assert len(wrong) == 10
    assert all(r["response"] != r["clean_response"] and len(r["response"]) == len(r["clean_response"]) for r in wrong)
    assert all(r["response"] == c["response"] == r["clean_response"] for r, c in zip(noisy, clean) if not r["corrupted"])
    assert world_lib.corrupt(clean, fraction=0.2, seed=4) != noisy  # which labels are wrong depends on the seed


def test_char_accuracy_gives_partial_credit_per_position():
    assert world_lib.char_accuracy(prediction="abcd", reference="abcd") == 1.0
    assert world_lib.char_accuracy(prediction="abxd", reference="abcd") == 0.75
    assert world_lib.char_accuracy(prediction="ab", reference="abcd") == 0.5  # missing letters count as wrong
    assert world_lib.char_accuracy(prediction="abcdef", reference="abcd") == pytest.approx(4 / 6)


def test_config_sweep_covers_the_grid_and_sft_starts_from_its_level():
    from configs import continuum as grid

    runs = grid.sweep()
    labels = {(r["objective"], r.get("alpha"), r.get("epsilon")) for r in runs}
    assert len(labels) == len(grid.GRID_OBJECTIVES)
    per_cell = len(grid.GRID_OBJECTIVES) - 1  # DFT only on seed 0 without noise
    assert len(runs) == len(grid.LEVELS) * (len(grid.SEEDS) * len(grid.NOISE) * per_cell + 1)
    config = grid.get_config("stage=sft,level=2,root=/tmp/r,objective=deft,epsilon=0")
    assert config.model.init_from == "/tmp/r/pretrain/level2"
    assert dict(config.objective) == {"name": "deft", "epsilon": 0.0}
    assert grid.get_config("stage=pretrain,level=3,root=/tmp/r").model.init_from == "/tmp/r/pretrain/level2"
    assert grid.get_config("stage=pretrain,level=0,root=/tmp/r").model.init_from == ""
    with pytest.raises(ValueError, match="level=9"):
        grid.get_config("level=9")


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    from experiments.continuum import run

    root = tmp_path_factory.mktemp("continuum")
    assert run.main(["--workdir", str(root), "--smoke", "--no_analysis"]) == 0
    return root


@pytest.mark.slow
def test_smoke_dial_moves_the_prior_and_sft_starts_from_the_pretrained_model(smoke_study):
    from configs import continuum as grid

    bases = [json.loads((smoke_study / "pretrain" / f"level{i}" / "base.json").read_text()) for i in (0, 1)]
    p = [b["sft_data"]["mean_p"] for b in bases]
    assert p[1] > p[0] + 0.05, p  # more target-map pretraining, a stronger prior on the SFT task
    # model.init_from: the SFT run's starting params are the level's pretrained params.
    config = grid.get_config(f"stage=sft,level=1,root={smoke_study},smoke")
    setup = build.setup(config, mesh_fallback=True)
    start = setup.initial_params()
    pretrained = setup.restore_params(workdir=smoke_study / "pretrain" / "level1",
                                         step=checkpointing.available_steps(smoke_study / "pretrain" / "level1")[-1])
    start, pretrained = jax_leaves(start), jax_leaves(pretrained)
    assert len(start) == len(pretrained) > 0
    assert all(np.array_equal(a, b) for a, b in zip(start, pretrained))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_smoke_tables_match_the_per_run_reports(smoke_study):
    from experiments.continuum import analyze

    text, numbers = analyze.report(smoke_study, smoke=True)
    results = analyze.load_results(smoke_study)
    # Recompute one cell of the continuum table from the per-run JSON: level 1, no noise, DEFT.
    cell = [r["generation"]["char_accuracy"] for r in results
            if r["level"] == 1 and r["noise"] == 0.0 and r["label"] == "deft"]
    assert len(cell) == 1
    row = [line for line in text.splitlines() if line.startswith("| 1 |")][0]  # first table: the dial
    winners = {w["level"]: w for w in numbers["winners"]["0.0"]}
    nll = [r["generation"]["char_accuracy"] for r in results
           if r["level"] == 1 and r["noise"] == 0.0 and r["label"] == "nll"][0]
    best = max(("deft", cell[0]), ("nll", nll), key=lambda kv: kv[1])
    assert winners[1]["best_score"] == pytest.approx(best[1])
    mean, half, n = winners[1]["over_nll"]
    assert n == 1 and mean == pytest.approx(best[1] - nll)
    table_rows = [line for line in text.splitlines() if line.startswith("| 1 | ")]
    assert any(f"{cell[0]:.3f}" in line for line in table_rows), table_rows
    base = json.loads((smoke_study / "pretrain" / "level1" / "base.json").read_text())
    assert f"{base['sft_data']['mean_p']:.3f}" in row
    assert not math.isnan(winners[1]["p"])
