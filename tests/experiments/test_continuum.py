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
    clean = world_lib.target_records(world, count=50, seed=3)
    noisy = world_lib.corrupt(clean, fraction=0.2, seed=3)
    wrong = [r for r in noisy if r["corrupted"]]
    assert len(wrong) == 10
    assert all(r["response"] != r["clean_response"] and len(r["response"]) == len(r["clean_response"]) for r in wrong)
    assert all(r["response"] == c["response"] == r["clean_response"] for r, c in zip(noisy, clean) if not r["corrupted"])
    assert world_lib.corrupt(clean, fraction=0.2, seed=4) != noisy  # which labels are wrong depends on the seed


def test_random_streams_differ_per_purpose():
    from configs import continuum as grid

    world = world_lib.make_world(**grid.WORLD)
    count = 64
    for seed in range(5):
        # SFT seed s must not draw level-s pretraining's start symbols (nor its noise stream's numbers).
        sft = [r["prompt"][-1] for r in world_lib.target_records(world, count=count, seed=seed)]
        pre = [r["prompt"][-1] for r in world_lib.pretraining_records(world, x=1.0, count=count, seed=seed)]
        assert sft != pre, seed
        draws = {purpose: world_lib.stream(purpose, seed).integers(0, 2**32, size=8).tolist()
                 for purpose in world_lib.PURPOSES}
        assert len({tuple(v) for v in draws.values()}) == len(world_lib.PURPOSES), seed
        # And each is its own stream: the records are the stream's draws, reproducibly.
        expected = world_lib.random_starts(world_lib.stream("sft", seed), count=count)
        assert sft == expected
    with pytest.raises(ValueError, match="purpose 'sfft'"):
        world_lib.stream("sfft", 0)


def test_dft_gradient_is_minus_p_gradient_by_autodiff_and_finite_differences():
    """Replaces the grid's DFT runs: DFT's loss sg(p)·(−log p) has −p's gradient p·(π − e_y) exactly."""
    import jax
    import jax.numpy as jnp

    from deft_jax import objectives

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 17)) * 2
    targets = rng.integers(0, 17, size=(3, 5))
    mask = (rng.random((3, 5)) > 0.2).astype(np.float64)
    with jax.enable_x64(True):
        def total(name):  # jitted: one compilation instead of one per operation
            return jax.jit(lambda z: jnp.sum(objectives.compute(name, z, targets, mask).loss))

        z = jnp.asarray(logits)
        dft, prob = jax.jit(jax.grad(total("dft")))(z), jax.jit(jax.grad(total("prob")))(z)
        np.testing.assert_allclose(np.asarray(dft), np.asarray(prob), rtol=1e-12, atol=1e-15)
        # Finite differences of −p's loss Σ(1 − p), a plain function of the logits (no stop-gradient).
        direction = rng.normal(size=logits.shape)
        step = 1e-6
        loss = total("prob")
        numeric = (loss(z + step * direction) - loss(z - step * direction)) / (2 * step)
        np.testing.assert_allclose(float(numeric), float(jnp.sum(dft * direction)), rtol=1e-7)
        pi = np.exp(logits - logits.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        p = np.take_along_axis(pi, targets[..., None], -1)
        reference = (mask[..., None] * p) * (pi - np.eye(17)[targets])
        np.testing.assert_allclose(np.asarray(dft), reference, rtol=1e-10, atol=1e-14)


def test_deft_epsilon_zero_matches_the_official_epsilon_on_the_continuum_vocabulary():
    """Replaces the grid's DEFT ε = 0 column: the official gate p^C·C/(C + ε) is ε = 0's p^C scaled by
    C/(C + ε), C = Σπ² ≥ 1/V, so on the continuum's byte vocabulary the gradients differ by at most ε·V."""
    import jax
    import jax.numpy as jnp

    from configs import continuum as grid
    from deft_jax import objectives

    vocab = build.setup(grid.get_config("smoke")).model_config.vocab_size
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 9, vocab)).astype(np.float32) * 3
    targets = rng.integers(0, vocab, size=(4, 9))
    mask = np.ones((4, 9), np.float32)

    def grad(epsilon):
        return np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(objectives.compute(
            "deft", z, targets, mask, epsilon=epsilon).loss)))(jnp.asarray(logits)))

    exact, official = grad(0.0), grad(1e-6)
    relative = np.abs(official - exact).max() / np.abs(exact).max()
    assert 0 < relative <= 1e-6 * vocab, relative


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
    assert len(runs) == len(grid.LEVELS) * len(grid.SEEDS) * len(grid.NOISE) * len(grid.GRID_OBJECTIVES)
    assert not any(r["objective"] == "dft" or r.get("epsilon") == 0.0 for r in runs)  # checks, not runs
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
