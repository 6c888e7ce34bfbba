"""Tokenizers that need no download.

ByteTokenizer: the 256 bytes plus special tokens (bos, eos, pad, and the prompt and
response separators). GPT2BPE: GPT-2's byte-level BPE read from a local checkpoint
directory's vocab.json and merges.txt.

Both lay a pair out the same way: prompt_ids(p) = [bos] + <prompt> + <response separator>,
response_ids(r) = <response> + [eos].
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path


class ByteTokenizer:
    name = "bytes"
    bos_id, eos_id, pad_id, prompt_id, response_id = 256, 257, 258, 259, 260
    vocab_size = 261  # the model's vocab_size may be larger (rounded up); extra rows are unused

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos_id, self.prompt_id, *self.encode(prompt), self.response_id]

    def response_ids(self, response: str) -> list[int]:
        return [*self.encode(response), self.eos_id]


# GPT-2's pre-tokenizer; [^\W\d_] is a letter in Python's Unicode-aware re.
_GPT2_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


class GPT2BPE:
    """GPT-2 byte-level BPE from vocab.json + merges.txt (a Hugging Face checkpoint directory)."""
    name = "gpt2-bpe"

    def __init__(self, directory: str | Path):
        d = Path(directory)
        missing = [f for f in ("vocab.json", "merges.txt") if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{d}: the checkpoint's tokenizer is not supported: {', '.join(missing)} "
                                    f"missing (portkit reads GPT-2 BPE from vocab.json + merges.txt)")
        self.encoder: dict[str, int] = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        self.decoder = {v: k for k, v in self.encoder.items()}
        lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        eot = self.encoder.get("<|endoftext|>")
        if eot is None:
            raise ValueError(f"{d / 'vocab.json'}: no <|endoftext|> token; not a GPT-2 tokenizer")
        self.bos_id = self.eos_id = self.pad_id = eot
        self.vocab_size = len(self.encoder)
        self._cache: dict[str, list[str]] = {}

    def _bpe(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(p, float("inf")), i) for i, p in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        b2u, ids = _byte_to_unicode(), []
        for piece in _GPT2_SPLIT.findall(text):
            word = "".join(b2u[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(word))
        return ids

    def decode(self, ids) -> str:
        u2b = {u: b for b, u in _byte_to_unicode().items()}
        text = "".join(self.decoder[i] for i in ids if i != self.eos_id)
        return bytes(u2b[c] for c in text).decode("utf-8", errors="replace")

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos_id, *self.encode(prompt + "\n")]

    def response_ids(self, response: str) -> list[int]:
        return [*self.encode(response), self.eos_id]
