"""experiments/gpu_check.py --tiny: the GPU script's whole program on a tiny model, on the CPU."""
import importlib.util
import math

from tests.helpers.runs import REPO_ROOT


def test_tiny_run_measures_and_checks_parity(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "experiments" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny", "--peak_tflops", "1"])
    train, decode, parity = result["train"], result["decode"], result["parity"]
    assert result["attention"] == "xla"  # 'auto' on a CPU
    # Random N(0, 0.02) weights give near-uniform predictions: NLL ≈ ln V.
    assert abs(train["loss"] - math.log(256)) < 0.05
    assert train["tokens_per_second"] == 2 * 64 / train["step_seconds"]
    assert result["mfu"] == train["flops_per_token"] * train["tokens_per_second"] / 1e12
    assert decode["steps"] == 4  # no stop id exists: every new token is decoded
    assert parity["device_vs_cpu"] == 0.0 and parity["max_abs_logit"] > 0  # the default device is the CPU
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "MFU" in printed and "parity" in printed
