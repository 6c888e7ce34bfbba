"""Datasets in JSONL, one object per line (extra keys are ignored):

    sft          {"prompt": str, "response": str}
    reward       {"prompt": str, "chosen": str, "rejected": str}   chosen is preferred
    reward_eval  the same schema, held out: the reward model's accuracy is measured on it
    prompts      {"prompt": str}                                   PPO / rejection sampling

The embedded defaults live in portkit/models/data/ (made by make_data.py). Errors name the
file, the line and the key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from portkit.errors import UserError

DATA_DIR = Path(__file__).parent / "data"
SCHEMAS = {"sft": ("prompt", "response"), "reward": ("prompt", "chosen", "rejected"),
           "reward_eval": ("prompt", "chosen", "rejected"), "prompts": ("prompt",)}


class DataError(UserError, ValueError):
    pass


def default_path(kind: str) -> Path:
    return DATA_DIR / f"{kind}.jsonl"


def load_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Rows of a JSONL file checked against the schema of `kind`."""
    path, keys = Path(path), SCHEMAS[kind]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (data.{kind})") from None
    rows = [_row(path, n, line, keys) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no rows (data.{kind} needs lines like {json.dumps({k: '...' for k in keys})})")
    return rows


def _row(path: Path, n: int, line: str, keys: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: not valid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise DataError(f"{path}:{n}: missing key {key!r} (this file needs {', '.join(keys)})")
        if not isinstance(obj[key], str):
            raise DataError(f"{path}:{n}: key {key!r} must be a string, got {type(obj[key]).__name__}")
    return {k: obj[k] for k in keys}


def _check_len(n_tokens: int, block_size: int, where: str) -> None:
    if n_tokens > block_size:
        raise DataError(f"{where}: {n_tokens} tokens, longer than model.block_size {block_size}; "
                        f"raise block_size or shorten the text")


@dataclass
class SFTData:
    idx: torch.Tensor      # (N, L) prompt + response + eos, right-padded
    targets: torch.Tensor  # (N, L) next token on response positions, -100 elsewhere


def sft_tensors(rows: list[dict], tok, block_size: int, name: str = "sft") -> SFTData:
    seqs, masks = [], []
    for n, r in enumerate(rows, 1):
        p, a = tok.prompt_ids(r["prompt"]), tok.response_ids(r["response"])
        _check_len(len(p) + len(a), block_size, f"{name} row {n}")
        seqs.append(p + a)
        masks.append([False] * len(p) + [True] * len(a))
    L = max(map(len, seqs))
    idx = torch.full((len(seqs), L), tok.pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        idx[i, :len(s)] = torch.tensor(s)
        tgt[i, :len(s) - 1] = torch.tensor([t if keep else -100 for t, keep in zip(s[1:], m[1:])])
    return SFTData(idx, tgt)


@dataclass
class PairData:
    chosen: torch.Tensor    # (N, L) right-padded prompt + response + eos
    chosen_end: torch.Tensor  # (N,) index of the last real token (where the score is read)
    rejected: torch.Tensor
    rejected_end: torch.Tensor


def pair_tensors(rows: list[dict], tok, block_size: int, name: str = "reward") -> PairData:
    out = []
    for key in ("chosen", "rejected"):
        seqs = []
        for n, r in enumerate(rows, 1):
            s = tok.prompt_ids(r["prompt"]) + tok.response_ids(r[key])
            _check_len(len(s), block_size, f"{name} row {n} ({key})")
            seqs.append(s)
        out.extend(_right_pad(seqs, tok.pad_id))
    return PairData(*out)


def _right_pad(seqs, pad):
    L = max(map(len, seqs))
    idx = torch.full((len(seqs), L), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
    return idx, torch.tensor([len(s) - 1 for s in seqs])


@dataclass
class PromptData:
    idx: torch.Tensor    # (N, Lp) left-padded prompts
    valid: torch.Tensor  # (N, Lp) bool, False on padding
    text: list[str]


def prompt_tensors(rows: list[dict], tok, block_size: int, max_new_tokens: int, name: str = "prompts") -> PromptData:
    seqs = [tok.prompt_ids(r["prompt"]) for r in rows]
    L = max(map(len, seqs))
    _check_len(L + max_new_tokens, block_size, f"{name}: longest prompt + max_new_tokens")
    idx = torch.full((len(seqs), L), tok.pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, L - len(s):], valid[i, L - len(s):] = torch.tensor(s), True
    return PromptData(idx, valid, [r["prompt"] for r in rows])
