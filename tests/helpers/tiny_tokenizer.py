"""A tiny ChatML tokenizer (byte-level BPE trained in milliseconds) for fast data-pipeline tests; the
`tiny_tokenizer` fixture of tests/conftest.py hands it out.

It implements formatting.TokenizerLike with the `tokenizers` package directly, so the data tests do not
depend on a real checkpoint. ChatML rendering with no default system prompt.
"""
from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<|im_start|>", "<|im_end|>")
_CORPUS = (
    "What word does this say? Please read the following figlet font: # | _ / \\ ( ) [ ] { } < > ' ` . , - = * ",
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.\n#### 18",
    "system user assistant You are a helpful assistant. Decode the art and output only the word.",
    "the quick brown fox jumps over the lazy dog 0123456789 THE QUICK BROWN FOX",
)


class TinyChatTokenizer:
    """Byte-level BPE with <pad>=0, <|im_start|>=1, <|im_end|>=2 (EOS); vocab ~300."""

    def __init__(self, *, vocab_size: int = 320, corpus: Sequence[str] = _CORPUS):
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(list(corpus), trainer)
        self.backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.pad_id = backend.token_to_id("<pad>")
        self.bos_id = None
        self.eos_id = backend.token_to_id("<|im_end|>")

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
