"""Mesh construction, logical-axis placement, and sharded == unsharded training on 8 fake CPU devices."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from deft_jax.model import decoder as model_lib
from deft_jax import sharding as sharding_lib
from tests.helpers.runs import losses_by_step, params_leaves, run_in_process, smoke_config


def test_mesh_sizes_and_fill():
    assert sharding_lib.resolve_mesh_shape(data=-1, fsdp=2, tensor=2, num_devices=8) == \
        {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert sharding_lib.data_parallel_size(mesh) == 4


@pytest.mark.parametrize("sizes, message", [
    (dict(data=3, fsdp=1, tensor=1), r"data=3 x fsdp=1 x tensor=1 = 3 devices, but JAX sees 8 device"),
    (dict(data=-1, fsdp=3, tensor=1), r"do not divide|does not divide"),
    (dict(data=-1, fsdp=-1, tensor=1), r"only one axis may be -1"),
    (dict(data=0, fsdp=1, tensor=1), r"config.mesh.data=0"),
])
def test_mesh_that_does_not_match_the_devices_is_named(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding_lib.make_mesh(**sizes)


def test_params_placed_as_the_rules_say():
    """Independent expectations, written out by hand from DEFAULT_LOGICAL_RULES."""
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    config = model_lib.ModelConfig.tiny(vocab_size=264)
    _, shardings = model_lib.param_layout(config, mesh=mesh, rules=model_lib.DEFAULT_LOGICAL_RULES)
    assert shardings["embedding"].spec == P("tensor", "fsdp")
    assert shardings["layers"]["attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor", None)
    assert shardings["layers"]["attn"]["o_proj"]["kernel"].spec == P(None, "tensor", None, "fsdp")
    assert shardings["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
    assert shardings["final_norm"]["scale"].spec in (P(None), P())


def test_rule_overrides_and_indivisible_dimension_is_named():
    mesh = sharding_lib.make_mesh(data=1, fsdp=1, tensor=8)
    rules = sharding_lib.logical_rules(base_rules=model_lib.DEFAULT_LOGICAL_RULES, overrides=[("vocab", None)])
    config = model_lib.ModelConfig.tiny(vocab_size=264)  # 2 kv heads cannot split 8 ways
    with pytest.raises(ValueError, match=r"parameter \['layers'\]\['attn'\]\['k_proj'\]\['kernel'\].*\(size 2\).*total size 8"):
        model_lib.param_layout(config, mesh=mesh, rules=rules)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding_lib.logical_rules(base_rules=(), overrides=[("vocab", "model")])


def test_distributed_settings_from_config_or_environment():
    assert sharding_lib.distributed_settings({"initialize": False, "coordinator_address": ""}, environ={}) is None
    settings = sharding_lib.distributed_settings(
        {"initialize": False, "coordinator_address": "", "num_processes": 0, "process_id": -1},
        environ={"DEFT_COORDINATOR_ADDRESS": "127.0.0.1:1234", "DEFT_NUM_PROCESSES": "2", "DEFT_PROCESS_ID": "1"})
    assert settings == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
    with pytest.raises(ValueError, match="num_processes and process_id"):
        sharding_lib.distributed_settings({"coordinator_address": "127.0.0.1:1"}, environ={})


STEPS = 3


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    config = smoke_config("deft", total_steps=STEPS, **{"mesh.data": 1})
    final = run_in_process(config, workdir, devices=jax.devices()[:1])
    return losses_by_step(workdir), final


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=8, fsdp=1, tensor=1)],
                         ids=["data2_fsdp2_tensor2", "data8"])
def test_sharded_equals_unsharded(mesh, unsharded, tmp_path):
    reference_losses, reference = unsharded
    overrides = {f"mesh.{k}": v for k, v in mesh.items()}
    final = run_in_process(smoke_config("deft", total_steps=STEPS, **overrides), tmp_path)
    losses = losses_by_step(tmp_path)
    assert sorted(losses) == sorted(reference_losses) == list(range(1, STEPS + 1))
    relative = max(abs(losses[s] - reference_losses[s]) / abs(reference_losses[s]) for s in losses)
    print(f"mesh {mesh}: max relative loss difference vs 1 device over {STEPS} steps: {relative:.2e}")
    assert relative <= 1e-5, relative
    # Adam divides by sqrt(v): where a gradient is ~0, float reordering noise moves an update by a
    # fraction of lr (1e-3 here), so parameters get an absolute tolerance well below lr x steps.
    for got, want in zip(params_leaves(final["state"]), params_leaves(reference["state"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    assert final["compilations"] == 1  # several steps, one compiled program
    params = final["state"].params
    if mesh["tensor"] == 2:
        assert params["embedding"].sharding.spec == P("tensor", "fsdp")
        assert params["layers"]["mlp"]["up_proj"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
        mu = final["state"].opt_state[0].mu  # AdamW moments shard like their parameters
        assert mu["embedding"].sharding.spec == P("tensor", "fsdp")
        shard_shape = params["embedding"].addressable_shards[0].data.shape
        assert shard_shape == (264 // 2, 64 // 2)
    else:
        assert params["embedding"].sharding.is_fully_replicated


@pytest.mark.parametrize("files, present", [
    ({"sys/bus/pci/devices/0000:00:04.0/vendor": "0x8086\n", "dev/null0": ""}, False),  # CPU-only
    ({"sys/bus/pci/devices/0000:00:05.0/vendor": "0x1ae0\n"}, True),  # a Google (TPU) PCI device
    ({"dev/accel0": ""}, True),  # TPU v4 device node
    ({"dev/vfio/0": ""}, True),  # TPU v5+ device node
])
def test_an_accelerator_is_assumed_unless_the_machine_shows_none(tmp_path, monkeypatch, files, present):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sharding_lib, "pjrt_plugins_installed", lambda: False)
    assert sharding_lib.accelerator_may_be_present(root=str(tmp_path)) is present
    monkeypatch.setattr(sharding_lib, "pjrt_plugins_installed", lambda: True)  # e.g. the CUDA plugin
    assert sharding_lib.accelerator_may_be_present(root=str(tmp_path)) is True


_PROBE_LIBTPU = """
import json, os, sys
from deft_jax import sharding
if sys.argv[1] == "cpu_only":
    sharding.accelerator_may_be_present = lambda **kwargs: False  # as on a CPU-only machine
    assert sharding.cpu_only_without_accelerator()
import jax
devices = jax.devices()
with open("/proc/self/maps") as maps:
    mapped = "libtpu" in maps.read()
print(json.dumps({"platforms": sorted({d.platform for d in devices}), "libtpu_mapped": mapped}))
"""


def test_cpu_only_skips_the_libtpu_probe_and_keeps_the_cpu_devices():
    """Without an accelerator JAX would load libtpu (~0.1 GiB) to look for a TPU, then use the CPU: with
    platforms set to cpu it never loads it, and the devices are the same."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("libtpu") is None or not os.path.exists("/proc/self/maps"):
        pytest.skip("needs an installed libtpu and Linux's /proc")
    if sharding_lib.accelerator_may_be_present():
        pytest.skip("this machine may have an accelerator: JAX's own probe is kept")
    env = {key: value for key, value in os.environ.items() if key != "JAX_PLATFORMS"}

    def probe(mode):
        result = subprocess.run([sys.executable, "-c", _PROBE_LIBTPU, mode], capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert probe("default") == {"platforms": ["cpu"], "libtpu_mapped": True}
    assert probe("cpu_only") == {"platforms": ["cpu"], "libtpu_mapped": False}


def test_chosen_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(sharding_lib, "accelerator_may_be_present", lambda **kwargs: False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert sharding_lib.cpu_only_without_accelerator() is False
