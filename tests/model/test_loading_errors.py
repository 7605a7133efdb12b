"""Bad model files name themselves: a truncated GGUF names the file (tokenizer and CLI), and a bad HF
config names the file and the field."""

import json
import re
import numpy as np
import pytest
from deft_jax import cli


def _tiny_gguf(path):
    """A GGUF with a byte-level BPE vocabulary and one 64×64 tensor after it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(["<s>", "</s>", "a", "b", "ab"] + [f"t{i}" for i in range(200)])
    writer.add_token_merges(["a b"])
    writer.add_token_types([3, 3] + [1] * 203)
    writer.add_eos_token_id(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.97], ids=["in_metadata", "in_vocabulary", "in_tensor_data"])
def test_a_truncated_gguf_names_the_file_in_the_tokenizer_and_the_cli(tmp_path, capsys, keep):
    from deft_jax import generate as generate_cli
    from deft_jax.model import tokenizer as tokenizer_lib

    whole = _tiny_gguf(tmp_path / "whole.gguf")
    assert tokenizer_lib.Tokenizer.from_gguf(whole).eos_id == 1
    data = whole.read_bytes()
    path = tmp_path / "model.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=rf"^{path}: .*truncated"):
        tokenizer_lib.Tokenizer.from_gguf(path)
    with pytest.raises(SystemExit) as info:
        cli.run("generate", generate_cli.main, ["--prompt", "hi", "--model", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"generate: error: {path}: ")


@pytest.mark.parametrize("change, expected", [
    ({"num_attention_heads": None}, "required field 'num_attention_heads' is missing"),
    ({"hidden_size": "128"}, "field 'hidden_size' must be a positive integer, got the string '128'"),
    ({"num_hidden_layers": 2.5}, "field 'num_hidden_layers' must be a positive integer, got 2.5"),
    ({"rms_norm_eps": "1e-6"}, "field 'rms_norm_eps' must be a positive number, got the string '1e-6'"),
], ids=["missing_heads", "string_hidden_size", "float_layers", "string_eps"])
def test_hf_config_errors_name_the_file_and_the_field(tmp_path, change, expected):
    from deft_jax.model import decoder as model_lib
    from deft_jax.model import weights

    settings = weights.config_to_hf(model_lib.ModelConfig.tiny(vocab_size=264), bos_id=0, eos_id=1)
    (tmp_path / "config.json").write_text(json.dumps(settings))
    assert weights.load_model_config(tmp_path).d_model == settings["hidden_size"]
    for key, value in change.items():
        if value is None:
            del settings[key]
        else:
            settings[key] = value
    (tmp_path / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'config.json'}: {re.escape(expected)}$"):
        weights.load_model_config(tmp_path)
