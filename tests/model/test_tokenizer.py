"""Tokenizer: exact GGUF BPE rebuild vs transformers' GGUF conversion, chat templates vs transformers'
apply_chat_template, save_hf round trip through transformers.AutoTokenizer."""
import json
import logging

import jinja2
import pytest

from deft_jax.model import pretrained
from deft_jax.model.tokenizer import CHATML_TEMPLATE, Tokenizer, load_tokenizer



def _transformers():
    """transformers, the independent reference: only the tests comparing against it need it."""
    return pytest.importorskip("transformers")

MIXED_TEXT = (
    "def area(r):\n    return 3.14159 * r ** 2  # cm²\n\n\n1\n\n2\t\t3   4"
    "Prices: $1,234.56 vs €7 — 2024-11-27T08:29:00Z; phone +1 (555) 010-9999\n"
    "Unicode: café, naïve, Ærø, Ελληνικά, русский, 漢字かなカナ, 한국어, עברית, العربية\n"
    "Emoji: 🚀👩‍👩‍👧‍👦🇫🇷 ✅\tTabs\t\tand   runs of    spaces   \r\n trailing  \n"
    "\u00a0nbsp\u200bzero-width <|im_start|>user\nhi<|im_end|>\n```python\nx = [i**2 for i in range(10)]\n```"
)
TEXTS_WITHOUT_DIGITS = [
    "Hello world! How's it going?  Fine, thanks.\n\nNew paragraph.",
    "def f(x):\n    return x * y  # comment\n\tindented\n",
    "café naïve Ærø Ελληνικά русский 漢字かなカナ 한국어 🚀👩‍👩‍👧‍👦🇫🇷 ✅",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "   leading and trailing spaces   \n\n\n  ",
    "I'm, you're, they'll, we've, she'd, it's -- DON'T SHOUT",
]
SYSTEM_USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}]
MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


@pytest.fixture(scope="module")
def default_gguf_path():
    return pretrained.smollm2_gguf_path()


@pytest.fixture(scope="module")
def default_tokenizer(default_gguf_path):
    return Tokenizer.from_gguf(default_gguf_path)


@pytest.fixture(scope="module")
def transformers_gguf_tokenizer(default_gguf_path):
    """Independent reference: transformers' own GGUF -> tokenizer conversion."""
    return _transformers().AutoTokenizer.from_pretrained(
        str(default_gguf_path.parent), gguf_file=default_gguf_path.name
    )


@pytest.fixture(scope="module")
def saved_hf_dir(default_tokenizer, tmp_path_factory):
    return default_tokenizer.save_hf(tmp_path_factory.mktemp("tokenizer_hf"))


def write_tiny_gguf(path, *, tokenizer_model="gpt2", pre="smollm", add_bos=True, chat_template=None):
    """A tensor-less GGUF with a hand-made byte-level vocabulary (Ġ is the byte-level space)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(["<s>", "</s>", "<tool>", "a", "b", "Ġ", "ab", "1", "2", "12"])
    writer.add_token_merges(["a b", "1 2"])
    writer.add_token_types([3, 3, 4, 1, 1, 1, 1, 1, 1, 1])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(add_bos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------------------- the real default


def test_default_special_tokens(default_tokenizer):
    tok = default_tokenizer
    assert (tok.bos_id, tok.id_to_token(tok.bos_id)) == (1, "<|im_start|>")
    assert (tok.eos_id, tok.id_to_token(tok.eos_id)) == (2, "<|im_end|>")
    assert tok.pad_id == 2  # the GGUF's padding_token_id
    assert tok.vocab_size == 49152
    assert tok.special_token_ids == set(range(17))  # the 17 control tokens
    assert tok.encode("<|im_start|>user\nhi<|im_end|>")[::4] == [1, 2]
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")  # add_bos_token is false


def test_default_roundtrip_mixed_text(default_tokenizer):
    for text in [MIXED_TEXT, *TEXTS_WITHOUT_DIGITS, "", " ", "\n", "🚀"]:
        ids = default_tokenizer.encode(text)
        assert default_tokenizer.decode(ids) == text
    assert default_tokenizer.encode_batch([MIXED_TEXT, "x"]) == [
        default_tokenizer.encode(MIXED_TEXT), default_tokenizer.encode("x")]
    without_specials = default_tokenizer.decode(default_tokenizer.encode("a<|im_end|>b"), skip_special_tokens=True)
    assert without_specials == "ab"


DIGIT_TEXTS = ["a  2", "x =    42\n\n7", "foo\t\t3", "In 2024, 1234567890 items cost $99.95 (x10^12).", MIXED_TEXT]


def test_default_splits_digits_one_per_token(default_tokenizer):
    for text in DIGIT_TEXTS:
        pieces = [default_tokenizer.decode([i]) for i in default_tokenizer.encode(text)]
        digit_pieces = [piece for piece in pieces if any(c.isdigit() for c in piece)]
        assert digit_pieces and all(len(piece) == 1 for piece in digit_pieces), pieces
    # The vocabulary has no multi-digit tokens, so the visible effect of the Digits pre-tokenizer is that a
    # whitespace run before a digit stays one pre-token ("ĠĠĠĠ") instead of ByteLevel's "ĠĠĠ" + "Ġ4".
    tokens = [default_tokenizer.id_to_token(i) for i in default_tokenizer.encode("x =    42\n\n7")]
    assert tokens == ["x", "Ġ=", "ĠĠĠĠ", "4", "2", "ĊĊ", "7"]


def test_default_matches_transformers_gguf_conversion(default_tokenizer, transformers_gguf_tokenizer):
    """transformers' GGUF conversion lacks only the pre-tokenizer's split of digits into single digits: equal on
    text without digits."""
    for text in TEXTS_WITHOUT_DIGITS:
        expected = transformers_gguf_tokenizer.encode(text, add_special_tokens=False)
        assert default_tokenizer.encode(text) == expected, text
    assert transformers_gguf_tokenizer.bos_token_id == default_tokenizer.bos_id
    assert transformers_gguf_tokenizer.eos_token_id == default_tokenizer.eos_id


def test_default_matches_transformers_conversion_plus_digit_split(default_tokenizer, transformers_gguf_tokenizer):
    """transformers' converted tokenizer with Digits(individual_digits=True) put in front of its own
    pre-tokenizer agrees with ours on every text, digits included."""
    from tokenizers import pre_tokenizers

    reference = transformers_gguf_tokenizer.backend_tokenizer
    reference = type(reference).from_str(reference.to_str())  # a copy; the fixture stays untouched
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), reference.pre_tokenizer])
    for text in [*DIGIT_TEXTS, *TEXTS_WITHOUT_DIGITS]:
        assert default_tokenizer.encode(text) == reference.encode(text, add_special_tokens=False).ids, text


# -------------------------------------------------------------------------------------------- chat templates


def test_default_chat_template_is_chatml(default_tokenizer):
    assert default_tokenizer.chat_template_source == "checkpoint"
    expected = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert default_tokenizer.apply_chat_template(SYSTEM_USER, add_generation_prompt=True) == expected
    assert default_tokenizer.apply_chat_template(SYSTEM_USER, add_generation_prompt=False) == expected[
        :-len("<|im_start|>assistant\n")]
    # SmolLM2's template inserts its default system prompt when none is given.
    assert default_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_matches_transformers_conversion(default_tokenizer, transformers_gguf_tokenizer):
    for messages in (SYSTEM_USER, MULTI_TURN, MULTI_TURN[1:]):
        for add_generation_prompt in (True, False):
            expected = transformers_gguf_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            assert default_tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt) == expected


def test_chatml_fallback_matches_transformers(tmp_path, saved_hf_dir, transformers_gguf_tokenizer):
    config_path = saved_hf_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    no_template_dir = tmp_path / "no_template"
    no_template_dir.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (no_template_dir / name).write_bytes((saved_hf_dir / name).read_bytes())
    (no_template_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_hf_dir(no_template_dir)
    assert tok.chat_template_source == "chatml-fallback"
    assert tok.apply_chat_template(SYSTEM_USER) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    for messages in (SYSTEM_USER, MULTI_TURN):
        for add_generation_prompt in (True, False):
            expected = transformers_gguf_tokenizer.apply_chat_template(
                messages, chat_template=CHATML_TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt)
            assert tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


FEATURE_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('bad role ' + message['role']) }}
    {% endif %}
    {% if loop.index0 > 2 %}{% break %}{% endif %}
    [{{ message['role'] | upper }}] {{ message['content'] | trim }} {{ message | tojson }}
{% endfor %}
{% if add_generation_prompt %}ASSISTANT:{% endif %}{{ eos_token }}"""


def test_template_environment_matches_transformers(tmp_path, saved_hf_dir, transformers_gguf_tokenizer):
    """trim/lstrip blocks, loop controls, tojson (non-ASCII kept), raise_exception, bos/eos variables."""
    config = json.loads((saved_hf_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = FEATURE_TEMPLATE
    custom_dir = tmp_path / "custom"
    custom_dir.mkdir()
    (custom_dir / "tokenizer.json").write_bytes((saved_hf_dir / "tokenizer.json").read_bytes())
    (custom_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_hf_dir(custom_dir)
    messages = [*MULTI_TURN[:2], {"role": "assistant", "content": "  café 🚀 \"q\"  "}, MULTI_TURN[3]]
    for add_generation_prompt in (True, False):
        expected = transformers_gguf_tokenizer.apply_chat_template(
            messages, chat_template=FEATURE_TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    with pytest.raises(jinja2.TemplateError, match="bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="content"):
        tok.apply_chat_template([{"role": "user"}])


# -------------------------------------------------------------------------------------------- HF export/import


def test_save_hf_roundtrip_through_transformers(default_tokenizer, saved_hf_dir):
    assert sorted(p.name for p in saved_hf_dir.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    reference = _transformers().AutoTokenizer.from_pretrained(str(saved_hf_dir))
    assert reference.encode(MIXED_TEXT, add_special_tokens=False) == default_tokenizer.encode(MIXED_TEXT)
    assert reference.encode(MIXED_TEXT) == default_tokenizer.encode(MIXED_TEXT, add_special_tokens=True)
    assert reference.decode(default_tokenizer.encode(MIXED_TEXT)) == MIXED_TEXT
    assert (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id) == (1, 2, 2)
    for messages in (SYSTEM_USER, MULTI_TURN):
        assert reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
            default_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    reloaded = Tokenizer.from_hf_dir(saved_hf_dir)
    assert reloaded.encode(MIXED_TEXT) == default_tokenizer.encode(MIXED_TEXT)
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id) == (1, 2, 2)
    assert reloaded.chat_template == default_tokenizer.chat_template


def test_load_tokenizer_by_name_and_paths(default_gguf_path, saved_hf_dir, tmp_path):
    by_name = load_tokenizer(pretrained.DEFAULT_MODEL)  # (a path resolves the same way: test_pretrained.py)
    assert by_name.source == str(default_gguf_path)
    hf_dir = tmp_path / "hf_model"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf_dir / name).write_bytes((saved_hf_dir / name).read_bytes())
    assert load_tokenizer(hf_dir).encode(MIXED_TEXT) == by_name.encode(MIXED_TEXT)


def test_hf_dir_errors(tmp_path, saved_hf_dir):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((saved_hf_dir / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="eos_token"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<not-a-token>"}')
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": ')
    with pytest.raises(ValueError, match=r"tokenizer_config.json:1: invalid JSON"):
        Tokenizer.from_hf_dir(tmp_path)


def test_hf_chat_template_sources(tmp_path, saved_hf_dir):
    (tmp_path / "tokenizer.json").write_bytes((saved_hf_dir / "tokenizer.json").read_bytes())
    config = {"eos_token": {"content": "<|im_end|>", "special": True}, "chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert tok.eos_id == 2 and tok.bos_id is None and tok.pad_id == 2
    assert tok.apply_chat_template(SYSTEM_USER) == "DEFAULT"
    (tmp_path / "chat_template.jinja").write_text("JINJA FILE")
    assert Tokenizer.from_hf_dir(tmp_path).apply_chat_template(SYSTEM_USER) == "JINJA FILE"


# -------------------------------------------------------------------------------------- tiny GGUF, by hand


def test_tiny_gguf_rebuild(tmp_path):
    tok = Tokenizer.from_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 1, 10)
    # "ab" merges; "12" would merge but digits are split first; <tool> (user-defined) is matched whole.
    assert tok.encode("ab ab12<tool>") == [6, 5, 6, 7, 8, 2]
    assert tok.encode("ab", add_special_tokens=True) == [0, 6]  # tokenizer.ggml.add_bos_token = true
    assert tok.decode([0, 6, 5, 6, 1], skip_special_tokens=True) == "ab ab"
    assert tok.special_token_ids == {0, 1}
    assert tok.chat_template_source == "chatml-fallback"
    with_template = Tokenizer.from_gguf(write_tiny_gguf(tmp_path / "t.gguf", chat_template="{{ bos_token }}!"))
    assert with_template.apply_chat_template(SYSTEM_USER) == "<s>!"


def test_tiny_gguf_unsupported(tmp_path):
    with pytest.raises(NotImplementedError, match="only byte-level BPE"):
        Tokenizer.from_gguf(write_tiny_gguf(tmp_path / "spm.gguf", tokenizer_model="llama"))
    with pytest.raises(NotImplementedError, match="'qwen2' is not supported"):
        Tokenizer.from_gguf(write_tiny_gguf(tmp_path / "qwen.gguf", pre="qwen2"))
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")


def test_chatml_fallback_warns_except_for_the_byte_tokenizer(caplog):
    """A checkpoint without a template is told it gets ChatML; the byte tokenizer, built for ChatML, is not,
    and building it leaves the module's logger as it was."""
    logger = logging.getLogger("deft_jax.tokenizer")
    level = logger.level
    with caplog.at_level(logging.WARNING, logger="deft_jax.tokenizer"):
        byte = load_tokenizer("byte")
        assert not caplog.records
        Tokenizer(backend=byte.backend, eos_token="<|im_end|>", source="no-template")
    assert [r.getMessage() for r in caplog.records] == ["no-template has no chat template; rendering chats as ChatML"]
    assert logger.level == level and byte.chat_template == CHATML_TEMPLATE
