"""Sampling from the GPT with a static KV cache, the decode step replayed as a device graph.

Each layer's keys and values live in one preallocated (B, nh, T + new, hs) buffer: the
prompt fills its first T columns, every decode step writes one column at a position held
in a device tensor and attends over all columns under a mask (the columns not yet written
are masked out). So every decode step has the same shapes and addresses, and where the
backend offers graphs (CUDA and ROCm: torch's CUDAGraph) the step is captured once and
replayed: one launch a token instead of hundreds, which is what bounds eager decoding of
a small batch. Sampling stays outside the graph, with the caller's generator, so the
tokens are the ones the plain path draws for that seed: a growing cache and one forward
through the model's __call__ a token, taken where the backend has no graphs or the model
has hooks that must run every step (ZeRO-3 gathering, tensor parallelism).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import torch
import torch.nn as nn

import portkit


class StaticKVCache:
    """One layer's keys and values, (B, nh, length, hs) each, allocated at the first write."""

    def __init__(self, length: int):
        self.length = length
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None
        self.pos: Optional[torch.Tensor] = None  # None: the prompt; else (1,) column of the decode step

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos is None:  # the prompt: columns [0, T), attended as given
            B, nh, T, hs = k.shape
            self.k = k.new_zeros(B, nh, self.length, hs)  # zeros: masked columns must not hold NaN
            self.v = v.new_zeros(B, nh, self.length, hs)
            self.k[:, :, :T], self.v[:, :, :T] = k, v
            return k, v
        self.k.index_copy_(2, self.pos, k)
        self.v.index_copy_(2, self.pos, v)
        return self.k, self.v


class Decoder:
    """The state of one generate call: token, column and validity buffers that the decode
    step reads, so that a graph of the step can be replayed after each buffer update."""

    def __init__(self, model: nn.Module, valid: torch.Tensor):
        (B, length), dev = valid.shape, valid.device
        self.model = model
        self.caches = [StaticKVCache(length) for _ in model.h]
        self.valid = valid  # (B, length): the generate loop marks each new column
        self.tok = torch.zeros(B, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.cols = torch.arange(length, device=dev)
        self.rope = None
        if model.cfg.pos == "rotary":
            import portkit.ops as ops
            self.rope = ops.rotary_tables(length, model.cfg.head_dim, device=dev)

    def step(self) -> torch.Tensor:
        """Next-token logits (B, V) of self.tok at column self.pos; writes that column's k, v."""
        m, upto = self.model, self.cols <= self.pos
        mask = ((self.valid & upto) | (self.cols == self.pos))[:, None, None, :]  # (B, 1, 1, L), as _attn_mask
        x = m.wte(self.tok)
        if m.wpe is not None:  # as _positions: real tokens up to this column, minus one
            x = x + m.wpe(((self.valid & upto).sum(1, keepdim=True) - 1).clamp(min=0))
        rope = None if self.rope is None else tuple(t.index_select(0, self.pos) for t in self.rope)
        delta = None
        for block, cache in zip(m.h, self.caches):
            cache.pos = self.pos
            x, delta = block(x, rope, mask, cache, delta)
        return m.logits(m.ln_f(x, delta)[1][:, -1])


def graph_api():
    """The active backend's device module where it has graphs (CUDAGraph, graph, streams), else None."""
    mod = portkit.backend().module
    if all(hasattr(mod, a) for a in ("CUDAGraph", "graph", "Stream", "stream", "current_stream")):
        return mod
    return None


def _graphable(model: nn.Module, device: torch.device) -> bool:
    """Graphs need the backend's device and no hooks (ZeRO-3 gathers parameters in hooks,
    tensor parallelism enters its regions through them)."""
    if device.type != portkit.backend().device_type or graph_api() is None:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def captured(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`step` captured as a graph: the returned function replays it and returns its output
    buffer. Warmed up on a side stream first, as graph capture requires."""
    mod = graph_api()
    side = mod.Stream()
    side.wait_stream(mod.current_stream())
    with mod.stream(side):
        for _ in range(2):  # the step rewrites the same column from the same inputs: harmless
            step()
    mod.current_stream().wait_stream(side)
    graph = mod.CUDAGraph()
    with mod.graph(graph):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out
    return replay


def _capture_or_plain(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    try:
        return captured(step)
    except RuntimeError as e:  # an op of the step that the device cannot capture: say so, decode plainly
        print(f"portkit generate: the decode step could not be captured as a graph ({str(e).splitlines()[0]}); "
              f"decoding without graphs (pass graphs=False to skip the attempt)", file=sys.stderr)
        return step


MODES = ("auto", "graph", "static", "plain")


@torch.no_grad()
def generate(model: nn.Module, idx, valid, max_new_tokens: int, eos_id: int, pad_id: int, sample: Callable,
             early_stop: bool = True, mode: str = "auto"):
    """GPT.generate's loop; `sample(logits) -> (B,)` draws the next tokens. mode "graph": the
    static cache, its decode step replayed as a graph; "static": the same step run plainly;
    "plain": a growing cache through the model's __call__ (framework hooks run every step:
    ZeRO-3, tensor parallelism); "auto": "graph" where _graphable, else "plain"."""
    if mode not in MODES:
        raise ValueError(f"generate: mode {mode!r} is not one of {', '.join(MODES)}")
    B, T = idx.shape
    if max_new_tokens < 1:
        return idx, valid
    if mode == "auto":
        mode = "graph" if _graphable(model, idx.device) else "plain"
    out = torch.full((B, T + max_new_tokens), pad_id, dtype=idx.dtype, device=idx.device)
    out[:, :T] = idx
    full_valid = torch.zeros(B, T + max_new_tokens, dtype=torch.bool, device=idx.device)
    full_valid[:, :T] = valid
    logits, step = (_plain if mode == "plain" else _static)(model, idx, full_valid, mode == "graph")
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for t in range(max_new_tokens):
        nxt = torch.where(done, torch.full_like(done, pad_id, dtype=idx.dtype), sample(logits))
        out[:, T + t], full_valid[:, T + t] = nxt, ~done
        done = done | (nxt == eos_id)
        if (early_stop and bool(done.all())) or t == max_new_tokens - 1:
            break
        logits = step(T + t, nxt)
    return out[:, :T + t + 1].contiguous(), full_valid[:, :T + t + 1].clone()


def _plain(model: nn.Module, idx, valid, _graph: bool):
    """(prompt logits, step(column, tokens) -> logits) over a growing cache, through __call__."""
    from portkit.models.gpt import KVCache
    cache = [KVCache() for _ in model.h]
    T = idx.shape[1]

    def step(col: int, nxt):
        return model(nxt[:, None], valid=valid[:, :col + 1], cache=cache, start=col)
    return model(idx, valid=valid[:, :T], cache=cache), step


def _static(model: nn.Module, idx, valid, graph: bool):
    """The same over the static cache; the decode step captured as a graph when `graph`."""
    dec = Decoder(model, valid)
    logits = model(idx, valid=valid[:, :idx.shape[1]], cache=dec.caches)  # the prompt, through __call__
    run = []

    def step(col: int, nxt):
        dec.tok.copy_(nxt[:, None])
        dec.pos.fill_(col)
        if not run:  # captured at the first decode step: the buffers hold its inputs
            run.append(_capture_or_plain(dec.step) if graph else dec.step)
        return run[0]()
    return logits, step
