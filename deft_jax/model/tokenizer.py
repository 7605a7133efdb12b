"""Tokenizers for deft_jax: Hugging Face tokenizer.json dirs and an exact rebuild of GGUF byte-level BPE.

All encoding runs in the Rust `tokenizers` package. Two sources:
- `Tokenizer.from_hf_dir(dir)`: tokenizer.json, plus tokenizer_config.json / special_tokens_map.json /
  chat_template.jinja for the chat template and the bos/eos/pad tokens.
- `Tokenizer.from_gguf(file)`: rebuilt from GGUF metadata (tokenizer.ggml.tokens, .merges, .token_type,
  .bos/eos/padding_token_id, tokenizer.chat_template). For `tokenizer.ggml.pre = smollm` the pre-tokenizer is
  Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)] (digits one per
  token), with a ByteLevel decoder; control tokens (token_type 3) are special added tokens, user-defined ones
  (token_type 4) plain added tokens, as llama.cpp treats them.

Special-token text inside the input (e.g. "<|im_end|>") is matched as that token, as in Hugging Face, so
a rendered chat template encodes to the real control tokens.

Chat templates are rendered like transformers' `apply_chat_template`: jinja2 sandbox, trim_blocks and
lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`, loop controls, variables `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, `pad_token`, `unk_token`. A checkpoint without a template
gets ChatML (`CHATML_TEMPLATE`); `chat_template_source` says which one is in use.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
from typing import Any, Iterable, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from deft_jax import chat
from deft_jax.model import pretrained
from deft_jax import errors
from deft_jax.model import ModelError

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# llama.cpp token types (gguf.TokenType).
GGUF_TOKEN_NORMAL, GGUF_TOKEN_UNKNOWN, GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED = 1, 2, 3, 4
GGUF_TOKEN_UNUSED, GGUF_TOKEN_BYTE = 5, 6


# ----------------------------------------------------------------------------------------------- GGUF metadata


_REQUIRED = object()


def gguf_string(reader, key: str, *, default: Any = _REQUIRED) -> str:
    """A string field of a gguf.GGUFReader (its bytes are parts[data[0]])."""
    field = _gguf_field(reader, key, default=default, kinds=("STRING",), array=False)
    return default if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_string_array(reader, key: str, *, default: Any = _REQUIRED) -> list[str]:
    """A string-array field: one part per element, indexed by field.data."""
    field = _gguf_field(reader, key, default=default, kinds=("STRING",), array=True)
    return default if field is None else [bytes(field.parts[index]).decode("utf-8") for index in field.data]


def gguf_int_array(reader, key: str, *, default: Any = _REQUIRED) -> list[int]:
    """An integer-array field (e.g. tokenizer.ggml.token_type)."""
    field = _gguf_field(reader, key, default=default, kinds=("INT", "UINT"), array=True)
    return default if field is None else [int(field.parts[index][0]) for index in field.data]


def gguf_scalar(reader, key: str, *, default: Any = _REQUIRED) -> int | float | bool:
    """An integer / float / bool scalar field."""
    field = _gguf_field(reader, key, default=default, kinds=("INT", "UINT", "FLOAT", "BOOL"), array=False)
    return default if field is None else field.parts[field.data[0]][0].item()


def _gguf_field(reader, key: str, *, default: Any, kinds: tuple[str, ...], array: bool):
    """The field, or None if absent and a default was given. Checks the value type: `kinds` are prefixes of
    gguf.GGUFValueType names (e.g. 'INT' matches INT32 and UINT32); `array` for arrays of those."""
    where = getattr(reader, "path", "<gguf>")
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ModelError(f"{where}: GGUF metadata key {key!r} is missing")
        return None
    type_names = [value_type.name for value_type in field.types]
    is_array = type_names[0] == "ARRAY"
    if is_array != array or not type_names[-1].startswith(kinds):
        wanted = f"ARRAY of {kinds}" if array else f"one of {kinds}"
        raise ModelError(f"GGUF metadata {key!r} in {where} has type {type_names}, expected {wanted}")
    return field


# ------------------------------------------------------------------------------------------- chat templates


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker) renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template with the same jinja2 environment as transformers' apply_chat_template."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(template)


# -------------------------------------------------------------------------------------------------- Tokenizer


class Tokenizer:
    """Encode/decode text and render chat templates; see the module docstring for the sources."""

    def __init__(
        self,
        *,
        backend: tokenizers.Tokenizer,
        eos_token: str,
        bos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        source: str = "<in memory>",
        warn_on_chatml_fallback: bool = True,
    ):
        self.backend = backend
        self.source = source
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.unk_token = unk_token
        self.eos_id = self._required_id(eos_token, role="eos")
        self.bos_id = self._required_id(bos_token, role="bos") if bos_token is not None else None
        self.pad_id = self._required_id(self.pad_token, role="pad")
        if unk_token is not None:
            self._required_id(unk_token, role="unk")
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.chat_template_source = "checkpoint" if chat_template else "chatml-fallback"
        self.chat_template = chat_template if chat_template else CHATML_TEMPLATE
        self._compiled_template = compile_chat_template(self.chat_template)
        if not chat_template and warn_on_chatml_fallback:
            missing = [t for t in ("<|im_start|>", "<|im_end|>") if backend.token_to_id(t) is None]
            logger.warning("%s has no chat template; rendering chats as ChatML%s", source,
                           f" (its vocabulary lacks {missing}, so they encode as plain text)" if missing else "")

    def _required_id(self, token: str, *, role: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ModelError(f"{role} token {token!r} is not in the vocabulary of {self.source}; "
                             f"fix the {role}_token entry of the checkpoint's tokenizer config.")
        return token_id

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos_token!r}:{self.bos_id}, eos={self.eos_token!r}:{self.eos_id}, pad={self.pad_token!r}:{self.pad_id}, "
                f"chat_template={self.chat_template_source})")

    # ----------------------------------------------------------------------------------------- encode/decode

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. add_special_tokens applies the checkpoint's post-processor (e.g. a BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """encode() over many texts, in parallel inside `tokenizers`."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (accepts lists, numpy/jax arrays)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    @property
    def special_token_ids(self) -> set[int]:
        """Ids of all special added tokens (control tokens)."""
        return {token_id for token_id, added in self.backend.get_added_tokens_decoder().items() if added.special}

    # ------------------------------------------------------------------------------------------ chat template

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render messages [{"role", "content"}] with the checkpoint's template (ChatML if it has none)."""
        chat.validate_messages(messages)
        return self._compiled_template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token,
            pad_token=self.pad_token,
            unk_token=self.unk_token or "",
        )

    # ------------------------------------------------------------------------------------------------ sources

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "Tokenizer":
        """Exact rebuild of a GGUF byte-level BPE tokenizer (tokenizer.ggml.model == 'gpt2')."""
        from deft_jax.model.gguf_file import open_gguf

        path = pathlib.Path(path)
        return cls.from_gguf_reader(open_gguf(path), source=str(path))

    @classmethod
    def from_gguf_reader(cls, reader, *, source: str = "<gguf>") -> "Tokenizer":
        """from_gguf() on an already opened gguf.GGUFReader (the weights loader can share one reader)."""
        tokenizer_model = gguf_string(reader, "tokenizer.ggml.model")
        if tokenizer_model != "gpt2":
            raise errors.UnsupportedError(
                f"{source}: tokenizer.ggml.model = {tokenizer_model!r}; only byte-level BPE ('gpt2') GGUF "
                f"tokenizers are rebuilt. Use the model's Hugging Face directory (tokenizer.json) instead."
            )
        pre = gguf_string(reader, "tokenizer.ggml.pre", default="default")
        tokens = gguf_string_array(reader, "tokenizer.ggml.tokens")
        merges = gguf_string_array(reader, "tokenizer.ggml.merges")
        token_types = gguf_int_array(reader, "tokenizer.ggml.token_type", default=[GGUF_TOKEN_NORMAL] * len(tokens))
        if len(token_types) != len(tokens):
            raise ModelError(f"{source}: {len(tokens)} tokens but {len(token_types)} token types")
        backend = build_byte_level_bpe(tokens=tokens, merges=merges, token_types=token_types, pre=pre, source=source)

        def token_for(key: str) -> str | None:
            token_id = gguf_scalar(reader, key, default=None)
            if token_id is None:
                return None
            if not 0 <= token_id < len(tokens):
                raise ModelError(f"{source}: {key} = {token_id} is outside the vocabulary (size {len(tokens)})")
            return tokens[token_id]

        bos_token = token_for("tokenizer.ggml.bos_token_id")
        eos_token = token_for("tokenizer.ggml.eos_token_id")
        if eos_token is None:
            raise ModelError(f"{source}: GGUF metadata has no tokenizer.ggml.eos_token_id; cannot end sequences.")
        add_bos = bool(gguf_scalar(reader, "tokenizer.ggml.add_bos_token", default=False))
        add_eos = bool(gguf_scalar(reader, "tokenizer.ggml.add_eos_token", default=False))
        if (add_bos and bos_token is None):
            raise ModelError(f"{source}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id")
        backend.post_processor = special_tokens_post_processor(
            backend=backend, bos_token=bos_token if add_bos else None, eos_token=eos_token if add_eos else None
        )
        return cls(
            backend=backend,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=token_for("tokenizer.ggml.padding_token_id"),
            unk_token=token_for("tokenizer.ggml.unknown_token_id"),
            chat_template=gguf_string(reader, "tokenizer.chat_template", default=None),
            source=source,
        )

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """A Hugging Face tokenizer directory: tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)."""
        directory = pathlib.Path(path)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise errors.MissingPathError(
                f"{directory} has no tokenizer.json (only fast tokenizers are supported). Create one with "
                f"`transformers.AutoTokenizer.from_pretrained('{directory}').save_pretrained('{directory}')`."
            )
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        special_map = _read_json(directory / "special_tokens_map.json")
        config = _read_json(directory / "tokenizer_config.json")

        def token_for(role: str) -> str | None:
            value = config.get(f"{role}_token", special_map.get(f"{role}_token"))
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise ModelError(f"{directory}/tokenizer_config.json: {role}_token must be a string, got {value!r}")
            return value

        eos_token = token_for("eos")
        if eos_token is None:
            raise ModelError(
                f"{directory}: neither tokenizer_config.json nor special_tokens_map.json defines eos_token; "
                f"add \"eos_token\": \"<the end-of-turn token>\" to tokenizer_config.json."
            )
        return cls(
            backend=backend,
            bos_token=token_for("bos"),
            eos_token=eos_token,
            pad_token=token_for("pad"),
            unk_token=token_for("unk"),
            chat_template=_hf_chat_template(directory=directory, config=config),
            source=str(directory),
        )

    # ----------------------------------------------------------------------------------------------- export

    def save_hf(self, out_dir: str | os.PathLike) -> pathlib.Path:
        """Write tokenizer.json, tokenizer_config.json (chat_template, bos/eos/pad) and special_tokens_map.json,
        loadable by transformers.AutoTokenizer.from_pretrained(out_dir)."""
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        special_map = {"eos_token": self.eos_token, "pad_token": self.pad_token}
        if self.bos_token is not None:
            special_map["bos_token"] = self.bos_token
        if self.unk_token is not None:
            special_map["unk_token"] = self.unk_token
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            **special_map,
        }
        config["chat_template"] = self.chat_template  # the ChatML fallback is written out explicitly
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
        return out


# ------------------------------------------------------------------------------------------------ builders


def format_prompt(tokenizer, text: str, *, chat: bool, system: str | None = None) -> str:
    """The text fed to the model: the tokenizer's chat template around `text` when chat, else `text`."""
    if not chat:
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def chat_by_default(tokenizer) -> bool:
    """Instruct checkpoints carry a chat template; base models (and the ChatML fallback) get raw text."""
    return getattr(tokenizer, "chat_template_source", None) == "checkpoint"


def gguf_pre_tokenizer(pre: str, *, source: str = "<gguf>") -> pre_tokenizers.PreTokenizer:
    """Pre-tokenizer for a GGUF `tokenizer.ggml.pre` value (only the byte-level ones verified exact)."""
    if pre == "smollm":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in ("gpt-2", "gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise errors.UnsupportedError(
        f"{source}: GGUF pre-tokenizer {pre!r} is not supported (supported: 'smollm', 'gpt-2'); its split regex "
        f"differs, so a rebuild would not be exact. Use the model's Hugging Face directory (tokenizer.json)."
    )


def build_byte_level_bpe(
    *, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], pre: str, source: str = "<gguf>"
) -> tokenizers.Tokenizer:
    """tokenizers BPE from GGUF vocab + merges ("a b" strings), the `pre` pre-tokenizer, a ByteLevel decoder;
    control tokens as special added tokens, user-defined tokens as plain added tokens."""
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelError(f"{source}: tokenizer.ggml.tokens has duplicate entries")
    merge_pairs = []
    for line_number, merge in enumerate(merges):
        left, separator, right = merge.partition(" ")
        if not separator or not left or not right:
            raise ModelError(f"{source}: tokenizer.ggml.merges[{line_number}] = {merge!r} is not 'left right'")
        merge_pairs.append((left, right))
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = gguf_pre_tokenizer(pre, source=source)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([
        tokenizers.AddedToken(token, special=True, normalized=False)
        for token, token_type in zip(tokens, token_types) if token_type == GGUF_TOKEN_CONTROL
    ])
    user_defined = [token for token, token_type in zip(tokens, token_types) if token_type == GGUF_TOKEN_USER_DEFINED]
    if user_defined:
        backend.add_tokens([tokenizers.AddedToken(token, special=False, normalized=False) for token in user_defined])
    return backend


def special_tokens_post_processor(
    *, backend: tokenizers.Tokenizer, bos_token: str | None, eos_token: str | None
) -> processors.PostProcessor:
    """TemplateProcessing that adds BOS/EOS when encode(add_special_tokens=True); ByteLevel offsets otherwise."""
    if bos_token is None and eos_token is None:
        return processors.ByteLevel(trim_offsets=False)
    prefix = [bos_token] if bos_token is not None else []
    suffix = [eos_token] if eos_token is not None else []
    used = sorted(set(prefix + suffix))
    return processors.TemplateProcessing(
        single=" ".join(prefix + ["$A"] + suffix),
        pair=" ".join(prefix + ["$A"] + suffix + prefix + ["$B"] + suffix),
        special_tokens=[(token, backend.token_to_id(token)) for token in used],
    )


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); fix or delete the file") from error


def _hf_chat_template(*, directory: pathlib.Path, config: dict) -> str | None:
    """chat_template.jinja (transformers >= 4.43 writes it) else tokenizer_config.json's chat_template, which
    may be a string or a list of {"name", "template"} (the one named 'default' is used)."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        if "default" in named:
            return named["default"]
        raise ModelError(f"{directory}/tokenizer_config.json: chat_template is a list without a 'default' entry "
                         f"(names: {sorted(map(str, named))}); add one.")
    raise ModelError(f"{directory}/tokenizer_config.json: chat_template must be a string or a list, got "
                     f"{type(template).__name__}")


# -------------------------------------------------------------------------------------------------- loading


BYTE_LEVEL = "byte"  # load_tokenizer's name for byte_level_tokenizer()


def byte_level_tokenizer() -> Tokenizer:
    """A 259-token byte-level tokenizer (3 ChatML/pad specials + 256 bytes, no merges) for tiny models."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(specials + alphabet)}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in specials])
    return Tokenizer(backend=backend, eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>",
                     source="byte-level", warn_on_chatml_fallback=False)  # ChatML is its intended template


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Tokenizer for 'smollm2-135m-instruct' (or another known name), a .gguf file, a Hugging Face dir, or
    'byte' (`byte_level_tokenizer`, for tiny models and tests)."""
    if str(name_or_path) == BYTE_LEVEL:
        return byte_level_tokenizer()
    kind, path = pretrained.resolve(name_or_path)
    tokenizer = Tokenizer.from_gguf(path) if kind == "gguf" else Tokenizer.from_hf_dir(path)
    logger.info("loaded %r", tokenizer)
    return tokenizer
