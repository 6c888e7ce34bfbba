"""A GPT at nanoGPT scale, built on portkit's fused ops.

One config; LayerNorm or RMSNorm, learned or rotary positions, GELU or SwiGLU MLP; a
language-model head tied to the token embedding (its loss goes through
linear_cross_entropy, so full logits are never built in training) or a scalar head for
reward and value models on the same trunk; a KV cache for generation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import portkit.ops as ops


@dataclass(kw_only=True, slots=True)
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64          # longest sequence (prompt + response) the model sees
    vocab_size: int = 264         # byte tokenizer: 256 bytes + specials, rounded up to a multiple of 8
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    pos: Literal["learned", "rotary"] = "learned"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    bias: bool = True             # biases in Linear and LayerNorm (GPT-2 has them)
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}")
        for key, allowed in (("norm", ("layernorm", "rmsnorm")), ("pos", ("learned", "rotary")),
                             ("mlp", ("gelu", "swiglu"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Norm(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind, self.eps = cfg.norm, cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(cfg.n_embd))
        self.bias = nn.Parameter(torch.zeros(cfg.n_embd)) if cfg.bias and cfg.norm == "layernorm" else None

    def forward(self, x, delta=None):
        """(x + delta, its norm) in one fused op; (x, the norm of x) when delta is None. A call
        of the module, so hooks on it run (DeepSpeed ZeRO-3 gathers the weights in one)."""
        if self.kind == "rmsnorm":
            return ops.add_rms_norm(x, delta, self.weight, self.eps)
        return ops.add_layer_norm(x, delta, self.weight, self.bias, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.head_dim, self.dropout = cfg.head_dim, cfg.dropout
        # q, k, v interleaved per head (nh, 3, hs), so a column split keeps whole heads
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x, rope, mask, cache):
        B, T, _ = x.shape
        qkv = self.c_attn(x)
        nh = qkv.shape[-1] // (3 * self.head_dim)  # local heads: fewer under tensor parallelism
        q, k, v = qkv.view(B, T, nh, 3, self.head_dim).permute(3, 0, 2, 1, 4)  # each (B, nh, T, hs)
        if rope is not None:
            q, k = ops.rotary(q, *rope), ops.rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nh, Tk, hs): the keys and values so far
        p = self.dropout if self.training else 0.0
        if mask is None and cache is None and p == 0.0 and rope is None:  # one gradient for the qkv projection
            y = ops.causal_attention_packed(qkv.view(B, T, nh, 3, self.head_dim))
        elif mask is None and cache is None and p == 0.0:  # (B, T, nh, hs) views in and out
            y = ops.causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None).transpose(1, 2)
        return self.c_proj(y.reshape(B, T, nh * self.head_dim))


class KVCache:
    """One layer's keys and values, grown by concatenation (the plain cache; generation uses
    models.generate.StaticKVCache)."""

    def __init__(self):
        self.k = self.v = None

    def update(self, k, v):
        if self.k is not None:
            k, v = torch.cat([self.k, k], 2), torch.cat([self.v, v], 2)
        self.k, self.v = k, v
        return k, v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = 4 * cfg.n_embd if cfg.mlp == "gelu" else 16 * math.ceil(8 * cfg.n_embd / 3 / 16)
        width = hidden if cfg.mlp == "gelu" else 2 * hidden  # swiglu packs [gate | up]
        self.c_fc = nn.Linear(cfg.n_embd, width, bias=False)
        # GELU's bias is added inside the fused bias_gelu (Megatron's pattern)
        self.fc_bias = nn.Parameter(torch.zeros(hidden)) if cfg.bias and cfg.mlp == "gelu" else None
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.kind == "gelu" and self._plain():  # one op: the matmuls can carry bias, GeLU and their gradients
            return self.drop(ops.gelu_mlp(x, self.c_fc.weight, self.fc_bias, self.c_proj.weight, self.c_proj.bias))
        if self.kind == "gelu":
            h = ops.bias_gelu(self.c_fc(x), self.fc_bias)
        else:
            h = ops.swiglu(self.c_fc(x))
        return self.drop(self.c_proj(h))

    def _plain(self) -> bool:
        """c_fc and c_proj are plain Linears without hooks (not tensor-parallel, not ZeRO-3's
        gathered parameters, not adapters), so their weights can be used directly."""
        return all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)
                   for m in (self.c_fc, self.c_proj))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = Norm(cfg), Attention(cfg), Norm(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache, delta=None):
        """x + attn(ln_1(x)), then + mlp(ln_2(.)), with each residual add fused into the norm
        after it: `delta` is the previous block's MLP output, still to be added to the stream
        x; returns the stream and this block's MLP output, to be added by the next norm
        (the next block's ln_1, or ln_f)."""
        x, h = self.ln_1(x, delta)
        x, h = self.ln_2(x, self.drop(self.attn(h, rope, mask, cache)))
        return x, self.mlp(h)


class GPT(nn.Module):
    """head="lm": next-token model; head="scalar": one number per position (reward, value)."""

    def __init__(self, cfg: GPTConfig, head: Literal["lm", "scalar"] = "lm"):
        super().__init__()
        if head not in ("lm", "scalar"):
            raise ValueError(f"head must be 'lm' or 'scalar', got {head!r}")
        self.cfg, self.head = cfg, head
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = Norm(cfg)
        self.score = nn.Linear(cfg.n_embd, 1) if head == "scalar" else None
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def trunk(self, idx, valid=None, cache=None, start=0):
        """Hidden states (B, T, C). valid (B, Tk) marks real tokens (left padding is False),
        Tk = start + T; cache is a list of per-layer caches (KVCache, generate.StaticKVCache)."""
        B, T = idx.shape
        if start + T > self.cfg.block_size:
            raise ValueError(f"cannot run a sequence of length {start + T}, block size is only {self.cfg.block_size}")
        x = self.wte(idx)  # (B, T, C)
        mask = None if valid is None and cache is None else _attn_mask(valid, B, T, start, idx.device)
        if self.wpe is not None:
            pos = _positions(valid, B, T, start, idx.device)  # (B, T)
            x = x + self.wpe(pos)
        rope = None
        if self.cfg.pos == "rotary":  # relative: column indices serve for left-padded rows too
            cos, sin = ops.rotary_tables(start + T, self.cfg.head_dim, device=idx.device)
            rope = (cos[start:], sin[start:])
        x, delta = self.drop(x), None
        for i, block in enumerate(self.h):
            x, delta = block(x, rope, mask, None if cache is None else cache[i], delta)
        return self.ln_f(x, delta)[1]

    def forward(self, idx, targets=None, valid=None, reduction="mean", cache=None, start=0, temperature=1.0,
                top_k=0):
        """lm head: the loss of predicting `targets` (B, T) (-100 = ignored), or with
        reduction="none" the per-token negative log-likelihood (B, T); without targets the
        next-token logits (B, V) of the last position only. Scalar head: (B, T).
        temperature, top_k: the loss under the distribution `generate` samples from with them."""
        h = self.trunk(idx, valid, cache, start)
        if self.head == "scalar":
            return self.score(h).squeeze(-1)
        if targets is None:
            return self.logits(h[:, -1])
        if top_k:  # the filter needs every logit: built here only, never in plain training
            logits = _keep_top_k(self.logits(h) / temperature, top_k)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        else:  # logits / temperature = (h / temperature) @ wte^T: the fused loss never builds them
            h = h.flatten(0, 1) if temperature == 1.0 else h.flatten(0, 1) / temperature
            loss = ops.linear_cross_entropy(h, self.wte.weight, targets.flatten(), reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    def logits(self, h):  # (..., C) -> (..., V)
        return F.linear(h, self.wte.weight).float()

    @torch.no_grad()
    def generate(self, idx, valid, max_new_tokens, eos_id, pad_id, temperature=1.0, top_k=0, generator=None,
                 early_stop=True, graphs=None):
        """Sample continuations with a KV cache (models.generate): a static cache whose decode
        step is replayed as a device graph where the backend has graphs and the model no hooks
        (graphs=None), else or with graphs=False a growing cache through __call__, drawing the
        same tokens for a seed. idx (B, T) left-padded prompts,
        valid (B, T). Returns tokens (B, T + n) and valid (B, T + n); after eos a row gets pad,
        valid False. early_stop=False runs all max_new_tokens steps (ranks in lockstep)."""
        from portkit.models.generate import generate
        mode = {None: "auto", True: "graph", False: "plain"}[graphs]
        return generate(self, idx, valid, max_new_tokens, eos_id, pad_id,
                        lambda logits: _sample(logits, temperature, top_k, generator), early_stop, mode)


def _attn_mask(valid, B, T, start, device):
    """(B, 1, T, Tk) bool, True = attend: causal, real keys only, and always itself."""
    Tk = start + T
    q = torch.arange(start, Tk, device=device)[:, None]
    k = torch.arange(Tk, device=device)[None, :]
    mask = (k <= q)[None, None]  # (1, 1, T, Tk)
    if valid is not None:
        mask = mask & valid[:, None, None, :Tk]
    return mask | (k == q)[None, None]


def _positions(valid, B, T, start, device):
    if valid is None:
        return torch.arange(start, start + T, device=device).expand(B, T)
    pos = valid.long().cumsum(1) - 1  # left padding: the first real token is at position 0
    return pos[:, start:start + T].clamp(min=0)


def _sample(logits, temperature, top_k, generator):
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        logits = _keep_top_k(logits, top_k)
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def _keep_top_k(logits, k):
    """-inf on all but the k largest logits of the last dimension."""
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sequence_logprobs(model, idx, valid, n_prompt, temperature=1.0, top_k=0):
    """Log-probabilities (B, T - n_prompt) of the tokens after the prompt, under `model` as
    `generate` samples with `temperature` and `top_k` (a token outside the top k: -inf)."""
    targets = idx[:, 1:].masked_fill(~valid[:, 1:], -100)
    nll = model(idx[:, :-1], targets, valid[:, :-1], reduction="none", temperature=temperature,
                top_k=top_k)  # (B, T-1)
    return -nll[:, n_prompt - 1:]
