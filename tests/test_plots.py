"""Gate plots: the curves are the objectives' gate formulas (1, p^α, p·1[p ≥ τ], p^C·C/(C + ε), ...) and
the CLI writes a readable PNG."""

import numpy as np
import pytest

from deft_jax import plots


def test_plotted_gates_are_the_gate_formulas():
    p = np.array([1e-4, 0.05, 0.3, 0.6, 0.99])
    gates = dict(plots.fixed_gates(p=p))
    np.testing.assert_allclose(gates["NLL (original, logp) = deformed α→0"], 1.0)
    np.testing.assert_allclose(gates["deformed α=0.5 (GeneralFamily-0.5)"], p**0.5, rtol=1e-5)
    np.testing.assert_allclose(gates["−p (p) = deformed α=1, and DFT"], p, rtol=1e-5)
    np.testing.assert_allclose(gates["OnlyTopP-0.5"], p * (p >= 0.5), rtol=1e-5)
    np.testing.assert_allclose(gates["OnlyBottomLogP-0.1"], 1.0 * (p <= 0.1))
    curves = {label: gate for _, label, gate in plots.adaptive_gates(p=p)}
    c = 0.3
    expected = np.where(plots.deft_feasible(p=p, collision=c), p**c * c / (c + 1e-6), np.nan)
    np.testing.assert_allclose(curves["DEFT C=0.3"], expected, rtol=1e-5)
    floor = 0.5 * 0.5
    alpha = np.clip(floor + (1 - floor) * p / (2 - p), 1e-3, 1)
    np.testing.assert_allclose(curves["Cayley, batch mean p=0.5"], p**alpha * alpha / (alpha + 1e-8), rtol=2e-5)
    np.testing.assert_allclose(curves["EAFT H̃=0.75"], 0.75, rtol=1e-6)


def test_deft_feasible_region():
    # C = 0.9: either p ≈ √0.9 (the target holds the mass) or p small (a rival holds it).
    p = np.array([0.01, 0.05, 0.5, 0.948, 0.99])
    np.testing.assert_array_equal(plots.deft_feasible(p=p, collision=0.9), [True, True, False, True, False])


def test_cli_writes_a_png(tmp_path):
    out = tmp_path / "sub" / "gates.png"
    assert plots.main(["gates", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < len(data) < 400_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 1040)
    with pytest.raises(SystemExit):
        plots.main(["gates"])  # --out is required
