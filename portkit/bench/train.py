"""`portkit bench train`: GPT training throughput of portkit beside native PyTorch.

Variants, each over the same shapes and the same random tokens:
  portkit            portkit.models.gpt.GPT (fused ops, loss through linear_cross_entropy),
                     bf16 parameters, ops.FusedAdamW with fp32 master weights
  portkit-compiled   the same under torch.compile (the ops' bodies are traced: inductor
                     launches their kernels)
  portkit-reference  portkit with the ops registry forced to "reference" (the torch code
                     paths): its step time against native-eager is the cost of portkit's
                     dispatch and patches
  native-eager       a plain-torch nanoGPT (nn.LayerNorm, tanh GELU, causal SDPA, logits +
                     F.cross_entropy), fp32 parameters under bf16 autocast,
                     torch.optim.AdamW(fused=True) where the device has it
  native-compiled    the same under torch.compile
  native-bf16        the plain-torch nanoGPT with bf16 parameters and ops.FusedAdamW, run with
                     the registry forced to "reference" like portkit-reference: the same
                     precision and optimizer, so the two differ only in the model code
                     (portkit's op dispatch, reference ops, patches) and the loss path

The dispatch overhead row compares portkit-reference with native-bf16 when both ran (else
with native-eager, whose precision and optimizer also differ; the row says which).

Every variant runs in its own process (nothing cached by an earlier variant, no allocator
leftovers, no order effect), from the same initial weights (the portkit GPT's, seeded; the
native model loads them with its q/k/v rows reordered) and on the same real, non-repeated
tokens: bytes of the Python standard library's source, in file order. The learning rate
warms up linearly over the first LR_WARMUP steps.

A run is warmup steps, then `steps` steps timed as a training loop runs (one
synchronisation at the end: the headline step time and tokens/s), then `steps` steps each
synchronised (the per-step column; host time is the median time until a step's work was
issued: near the step time the run is host-bound, well below it the device is the limit).
`--repeats N` runs every variant N times, each round in a fresh order (round r starts at the
r-th variant) and reports each variant's run of median step time: a machine whose host or
clocks drift between processes then cannot favour whichever side ran at a good moment.
The convergence check compares the mean loss of the last TAIL steps of every variant with
the native reference variant's (native-eager, else native-compiled, else native-bf16): it
passes within LOSS_TOLERANCE, relative. MFU = flops per token * tokens/s / peak, with
flops per token = 6 * N + 12 * L * d * T (N: parameters without the position embedding,
the tied token embedding counted once as the LM head; the attention term counts the full
T x T score and value matmuls, forward and backward, as nanoGPT and PaLM do). None where
the backend has no bf16 peak (the CPU).

`--ppo` also measures, for a 350M actor: generation tokens/s through GPT.generate with the
KV cache (all new tokens sampled, no early stop), and the time of one PPO update on a
synthetic rollout of that batch: the actor's clipped policy loss over
sequence_logprobs, backward and FusedAdamW step, then a same-size critic's clipped value
loss, backward and step (the body of portkit.models.rlhf.ppo.update for one minibatch).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import portkit
import portkit.ops as ops
from portkit.bench.cli import write_output
from portkit.errors import UserError
from portkit.ops import registry

SCHEMA = "portkit.bench.train/1"
VARIANTS = ("portkit", "portkit-compiled", "portkit-reference", "native-eager", "native-compiled", "native-bf16")
DEFAULT_VARIANTS = ("portkit", "portkit-reference", "native-eager", "native-compiled", "native-bf16")
REFERENCE_MODE = ("portkit-reference", "native-bf16")  # run with registry.set_mode("reference")
FLOPS_FORMULA = "6*N + 12*L*d*T flops per token (N: params without wpe; full T x T attention)"
LR, LR_WARMUP = 3e-4, 10
TAIL = 5                 # the convergence check compares the mean loss of the last TAIL steps
LOSS_TOLERANCE = 0.02    # relative difference of that mean from the native reference's
NATIVE_REFERENCES = ("native-eager", "native-compiled", "native-bf16")


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_embd: int
    n_head: int
    batch: int
    seq: int
    vocab: int = 50304


PRESETS = {
    "124m": Preset(12, 768, 12, 16, 1024),
    "350m": Preset(24, 1024, 16, 16, 1024),
    "1.3b": Preset(24, 2048, 16, 8, 2048),
    "tiny": Preset(2, 64, 4, 2, 32, vocab=512),
}


@dataclass(frozen=True)
class PPOShape:
    model: str = "350m"
    batch: int = 16
    prompt: int = 64
    new_tokens: int = 128


QUICK_PPO = PPOShape(model="tiny", batch=2, prompt=8, new_tokens=8)


# -- the CLI ----------------------------------------------------------------------------------
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="124m,350m,1.3b", help=f"comma-separated presets: {', '.join(PRESETS)}")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=20,
                   help="steps timed as a loop runs, then as many synchronised each (default %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default %(default)s)")
    p.add_argument("--batch", type=int, help="override the presets' batch size")
    p.add_argument("--seq", type=int, help="override the presets' sequence length")
    p.add_argument("--compile", action="store_true", help="add portkit-compiled (torch.compile of the portkit GPT)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled variants (default %(default)s)")
    p.add_argument("--ppo", action="store_true", help="also measure PPO generation and update on a 350M actor")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 steps: a smoke run that works on the CPU")
    p.add_argument("--backend", help="backend to run on (default: the best available)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every variant this many times, the order rotated each round; the table shows each "
                        "variant's median run (the faster of two) and the JSON every run's step time "
                        "(default %(default)s)")
    p.add_argument("--json-out", type=Path, help="write the results as JSON here")


@dataclass
class TrainArgs:
    models: tuple[str, ...]
    variants: tuple[str, ...]
    steps: int
    warmup: int
    batch: Optional[int]
    seq: Optional[int]
    compile_backend: str
    ppo: Optional[PPOShape]
    quick: bool
    repeats: int = 1


def parse(args: argparse.Namespace) -> TrainArgs:
    models = _split(args.models, PRESETS, "--models")
    variants = _split(args.variants, VARIANTS, "--variants")
    if args.compile and "portkit-compiled" not in variants:
        variants += ("portkit-compiled",)
    steps, warmup = args.steps, args.warmup
    if args.quick:
        models, steps, warmup = ("tiny",), 2, 1
    if steps < 1 or warmup < 0 or min(args.batch or 1, args.seq or 1, args.repeats) < 1:
        raise UserError(f"--steps and --repeats must be >= 1, --warmup >= 0, --batch/--seq >= 1 "
                        f"(got {steps}, {args.repeats}, {warmup}, {args.batch}, {args.seq})")
    ppo = (QUICK_PPO if args.quick else PPOShape()) if args.ppo else None
    return TrainArgs(models, variants, steps, warmup, args.batch, args.seq, args.compile_backend, ppo, args.quick,
                     args.repeats)


def _split(text: str, allowed, flag: str) -> tuple[str, ...]:
    names = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(f"{flag} {text!r}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}")
    return names


def main(args: argparse.Namespace) -> int:
    ta = parse(args)
    portkit.select_backend(args.backend)
    report = run(ta, command_line(args), progress=lambda s: print(f"  {s} ...", file=sys.stderr, flush=True))
    print_table(report)
    if args.json_out:
        write_output(args.json_out, json.dumps(report, indent=1) + "\n")
    return 0


def command_line(args: argparse.Namespace) -> str:
    parts = ["portkit bench train", f"--models {args.models}", f"--variants {args.variants}",
             f"--steps {args.steps}", f"--warmup {args.warmup}"]
    parts += [f"--{k} {getattr(args, k)}" for k in ("batch", "seq") if getattr(args, k) is not None]
    if args.repeats != 1:
        parts.append(f"--repeats {args.repeats}")
    if args.compile_backend != "inductor":
        parts.append(f"--compile-backend {args.compile_backend}")
    parts += [f"--{k}" for k in ("compile", "ppo", "quick") if getattr(args, k)]
    return " ".join(parts)


# -- the native peer --------------------------------------------------------------------------
class NativeBlock(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class NativeGPT(nn.Module):
    """nanoGPT in plain torch: the same shapes and parameter count as the portkit GPT."""

    def __init__(self, p: Preset, block_size: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(p.vocab, p.n_embd), nn.Embedding(block_size, p.n_embd)
        self.h = nn.ModuleList(NativeBlock(p.n_embd, p.n_head) for _ in range(p.n_layer))
        self.ln_f = nn.LayerNorm(p.n_embd)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied LM head
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# -- building the variants --------------------------------------------------------------------
@dataclass
class Built:
    model: nn.Module
    step_model: Callable
    opt: torch.optim.Optimizer
    autocast: bool
    precision: str
    optimizer: str


def portkit_gpt(p: Preset, block_size: int, head: str = "lm") -> nn.Module:
    """The portkit GPT of a preset, fp32, its weights drawn from seed 0 on the device."""
    from portkit.models.gpt import GPT, GPTConfig
    cfg = GPTConfig(n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd, block_size=block_size, vocab_size=p.vocab,
                    norm="layernorm", pos="learned", mlp="gelu", bias=True)
    torch.manual_seed(0)
    with torch.device(portkit.device()):
        return GPT(cfg, head=head)


def native_state(state: dict, p: Preset) -> dict:
    """The portkit GPT's state dict under NativeGPT's names; c_attn's rows go from portkit's
    per-head (nh, 3, hs) order to nanoGPT's (3, nh, hs)."""
    C, nh = p.n_embd, p.n_head
    out = {k: state[k] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    renames = {"ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias", "ln_2.weight": "ln_2.weight",
               "ln_2.bias": "ln_2.bias", "attn.c_proj.weight": "attn_proj.weight", "attn.c_proj.bias": "attn_proj.bias",
               "mlp.c_fc.weight": "c_fc.weight", "mlp.fc_bias": "c_fc.bias", "mlp.c_proj.weight": "mlp_proj.weight",
               "mlp.c_proj.bias": "mlp_proj.bias"}
    for i in range(p.n_layer):
        for ours, theirs in renames.items():
            out[f"h.{i}.{theirs}"] = state[f"h.{i}.{ours}"]
        for kind in ("weight", "bias"):
            t = state[f"h.{i}.attn.c_attn.{kind}"]
            out[f"h.{i}.c_attn.{kind}"] = t.reshape(nh, 3, -1).transpose(0, 1).reshape(3 * C, *t.shape[1:])
    return out


def build(variant: str, p: Preset, seq: int, compile_backend: str) -> Built:
    """Every variant starts from portkit_gpt's weights: the same initial model on both sides."""
    model = portkit_gpt(p, seq)
    if not variant.startswith("portkit"):
        with torch.device(portkit.device()):
            native = NativeGPT(p, seq)
        native.load_state_dict(native_state(model.state_dict(), p))
        model = native
    compiled = variant.endswith("compiled")
    if variant.startswith("portkit") or variant == "native-bf16":
        model = model.to(torch.bfloat16)
        opt = ops.FusedAdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
        step_model = torch.compile(model, backend=compile_backend) if compiled else model
        return Built(model, step_model, opt, False, "bf16 params, fp32 masters", "portkit FusedAdamW")
    opt, fused = native_adamw(model)
    step_model = torch.compile(model, backend=compile_backend) if compiled else model
    return Built(model, step_model, opt, True, "fp32 params, bf16 autocast", f"torch.optim.AdamW(fused={fused})")


def native_adamw(model: nn.Module) -> tuple[torch.optim.Optimizer, bool]:
    """torch.optim.AdamW(fused=True), or the foreach one where the device has no fused kernel
    (the report names which)."""
    kw = dict(lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kw), True
    except RuntimeError as e:
        print(f"  torch.optim.AdamW(fused=True) unavailable on {portkit.device()}: {e}", file=sys.stderr)
        return torch.optim.AdamW(model.parameters(), **kw), False


def train_step(b: Built, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
    for group in b.opt.param_groups:
        group["lr"] = LR * min(1.0, (step + 1) / LR_WARMUP)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if b.autocast else contextlib.nullcontext()
    with ctx:
        loss = b.step_model(x, y)
    loss.backward()
    b.opt.step()
    b.opt.zero_grad(set_to_none=True)
    return loss


# -- the data ---------------------------------------------------------------------------------
def text_batches(steps: int, batch: int, seq: int) -> torch.Tensor:
    """(steps, batch, seq + 1) byte tokens of real text, none repeated: the Python standard
    library's source files in name order (the same on both sides of a run)."""
    need = steps * batch * (seq + 1)
    buf = bytearray()
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        buf += f.read_bytes()
        if len(buf) >= need:
            return torch.frombuffer(buf[:need], dtype=torch.uint8).long().view(steps, batch, seq + 1)
    raise ValueError(f"the standard library's source has {len(buf):,} bytes, fewer than the {need:,} tokens of "
                     f"{steps} steps of {batch} x {seq + 1}; lower --steps, --batch or --seq")


# -- measuring --------------------------------------------------------------------------------
def flops_per_token(model: nn.Module, p: Preset, seq: int) -> float:
    n = sum(prm.numel() for name, prm in model.named_parameters() if not name.startswith("wpe."))
    return 6 * n + 12 * p.n_layer * p.n_embd * seq


def peak_bytes() -> Optional[int]:
    if portkit.backend().device_type == "cpu":
        return None
    portkit.synchronize()
    return portkit.backend().memory_stats()["peak_allocated"]


def train_variant(variant: str, name: str, ta: TrainArgs) -> dict:
    """One variant, measured in this process (a worker of `run`)."""
    p = PRESETS[name]
    batch, seq = ta.batch or p.batch, ta.seq or p.seq
    row = {"model": name, "variant": variant, "batch": batch, "seq": seq, "layers": p.n_layer, "d_model": p.n_embd,
           "heads": p.n_head, "vocab": p.vocab, "error": None}
    if variant in REFERENCE_MODE:
        registry.set_mode("reference")
    row["ops_mode"] = registry.mode()
    try:
        row.update(_train(variant, p, batch, seq, ta))
    except torch.OutOfMemoryError as e:
        row["error"] = f"out of memory: {str(e).splitlines()[0]}"
    except Exception as e:  # a compile failure is a result of the compiled variants, recorded, not fatal
        if not variant.endswith("compiled"):
            raise
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def _train(variant: str, p: Preset, batch: int, seq: int, ta: TrainArgs) -> dict:
    data = text_batches(ta.warmup + 2 * ta.steps, batch, seq).to(portkit.device())
    b = build(variant, p, seq, ta.compile_backend)
    if portkit.backend().device_type != "cpu":  # the peak of training, not of building (fp32 before the cast)
        portkit.backend().reset_peak_memory()
    losses, host = [], []

    def step(i: int) -> None:  # host: the seconds until the step's work is issued
        t = time.perf_counter()
        losses.append(train_step(b, data[i, :, :-1], data[i, :, 1:], i).detach())
        host.append(time.perf_counter() - t)
    for i in range(ta.warmup):
        step(i)
    clocks = Clocks(portkit.backend().module)  # its first read (NVML starting) before the timer
    portkit.synchronize()
    t = time.perf_counter()
    with clocks:
        for i in range(ta.warmup, ta.warmup + ta.steps):  # as a training loop runs: one sync at the end
            step(i)
        portkit.synchronize()
    loop_s = (time.perf_counter() - t) / ta.steps
    synced = []
    for i in range(ta.warmup + ta.steps, ta.warmup + 2 * ta.steps):
        t = time.perf_counter()
        step(i)
        portkit.synchronize()
        synced.append(time.perf_counter() - t)
    row = _row(b, p, batch, seq, loop_s, synced, host[-ta.steps:], torch.stack(losses).float().tolist())
    return {**row, **clocks.means(), "compiled": variant.endswith("compiled")}


class Clocks:
    """The device's SM clock (MHz) and power draw (W), read every INTERVAL seconds on a thread
    while the `with` block runs, where the device module reads them (torch.cuda through NVML
    or AMD SMI); their means, or None where they cannot be read (the CPU, no NVML library).
    Runs of one build whose step times differ with these means differ by the card, not the code."""
    INTERVAL = 0.05

    def __init__(self, module):
        self.read, self.samples = _clock_reader(module), []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.samples.append(self.read())

    def __enter__(self) -> "Clocks":
        if self.read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def means(self) -> dict:
        if not self.samples:
            return {"sm_clock_mhz": None, "power_w": None}
        return {key: round(statistics.fmean(s[i] for s in self.samples), 1)
                for i, key in enumerate(("sm_clock_mhz", "power_w"))}


def _clock_reader(module) -> Optional[Callable[[], tuple[float, float]]]:
    clock, power = getattr(module, "clock_rate", None), getattr(module, "power_draw", None)
    if clock is None or power is None:
        return None
    try:
        clock(), power()
    except Exception:  # torch raises what NVML or AMD SMI raises when missing or unsupported
        return None
    return lambda: (clock(), power() / 1000)  # MHz, mW -> W


def _row(b: Built, p: Preset, batch: int, seq: int, loop_s: float, synced: list[float], host: list[float],
         losses: list[float]) -> dict:
    tps, fpt, peak = batch * seq / loop_s, flops_per_token(b.model, p, seq), portkit.peak_bf16_tflops()
    return {"params": sum(q.numel() for q in b.model.parameters()), "precision": b.precision,
            "optimizer": b.optimizer,
            "step_ms": round(loop_s * 1e3, 3), "synced_step_ms": round(statistics.median(synced) * 1e3, 3),
            "host_ms": round(statistics.median(host) * 1e3, 3), "tokens_per_s": round(tps, 1),
            "tflops": round(fpt * tps / 1e12, 2), "mfu": round(fpt * tps / (peak * 1e12), 4) if peak else None,
            "peak_bytes": peak_bytes(), "losses": [round(x, 4) for x in losses],
            "final_loss": round(statistics.fmean(losses[-TAIL:]), 4)}


def convergence(results: list[dict]) -> list[dict]:
    """Each variant's mean loss over the last TAIL steps against the native reference's."""
    out = []
    for name in dict.fromkeys(r["model"] for r in results):
        by = {r["variant"]: r for r in results if r["model"] == name and not r["error"]}
        ref = next((v for v in NATIVE_REFERENCES if v in by), None)
        for variant, r in by.items():
            if ref is None or variant == ref:
                continue
            rel = (r["final_loss"] - by[ref]["final_loss"]) / by[ref]["final_loss"]
            out.append({"model": name, "variant": variant, "reference": ref, "loss": r["final_loss"],
                        "reference_loss": by[ref]["final_loss"], "relative": round(rel, 4),
                        "tolerance": LOSS_TOLERANCE, "passed": abs(rel) <= LOSS_TOLERANCE})
    return out


def overheads(results: list[dict]) -> list[dict]:
    """portkit-reference step time against plain torch, per model: the dispatch + patch cost."""
    out = []
    for name in dict.fromkeys(r["model"] for r in results):
        by = {r["variant"]: r for r in results if r["model"] == name and not r["error"]}
        peer = next((v for v in ("native-bf16", "native-eager") if v in by), None)
        if "portkit-reference" in by and peer:
            ref, nat = by["portkit-reference"]["step_ms"], by[peer]["step_ms"]
            out.append({"model": name, "portkit_reference_ms": ref, "peer": peer, "peer_ms": nat,
                        "overhead_pct": round(100 * (ref - nat) / nat, 2)})
    return out


# -- PPO --------------------------------------------------------------------------------------
def measure_ppo(shape: PPOShape, ta: TrainArgs) -> dict:
    p = PRESETS[shape.model]
    out = {"actor": shape.model, "batch": shape.batch, "prompt_tokens": shape.prompt,
           "new_tokens": shape.new_tokens, "error": None,
           "update_measures": "actor: sequence_logprobs + ppo.policy_loss + backward + FusedAdamW step; "
                              "critic (same size, scalar head): forward + ppo.value_loss + backward + step; "
                              "one minibatch = the whole rollout batch"}
    try:
        out.update(_ppo(p, shape, ta))
    except torch.OutOfMemoryError as e:
        out["error"] = f"out of memory: {str(e).splitlines()[0]}"
    return out


def timed_calls(fn: Callable[[], object], calls: int, warmup: int) -> list[float]:
    """Seconds of each call, synchronized before and after."""
    for _ in range(warmup):
        fn()
    portkit.synchronize()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        portkit.synchronize()
        times.append(time.perf_counter() - t)
    return times


def _ppo(p: Preset, shape: PPOShape, ta: TrainArgs) -> dict:
    from portkit.models.rlhf import ppo
    from portkit.models.gpt import sequence_logprobs
    block = max(p.seq, shape.prompt + shape.new_tokens)
    actor = portkit_gpt(p, block).to(torch.bfloat16)
    critic = portkit_gpt(p, block, head="scalar").to(torch.bfloat16)
    dev, B = portkit.device(), shape.batch
    gen = torch.Generator(device=dev).manual_seed(0)
    idx = torch.randint(0, p.vocab, (B, shape.prompt), device=dev, generator=gen)
    valid = torch.ones_like(idx, dtype=torch.bool)

    def generate():
        return actor.generate(idx, valid, shape.new_tokens, eos_id=-1, pad_id=0, temperature=1.0,
                              generator=gen, early_stop=False)
    actor.eval()
    gen_times = timed_calls(generate, max(1, ta.steps // 4), 1)
    seq, svalid = generate()
    roll = _synthetic_rollout(seq, svalid, shape.prompt, gen)
    a_opt, c_opt = (ops.FusedAdamW(m.parameters(), lr=1e-6, weight_decay=0.0) for m in (actor, critic))
    actor.train(), critic.train()

    def update():
        logp = sequence_logprobs(actor, roll["seq"], roll["valid"], roll["P"])
        pl, _ = ppo.policy_loss(logp, roll["logp"], roll["adv"], roll["mask"], 0.2)
        pl.backward(), a_opt.step(), a_opt.zero_grad(set_to_none=True)
        v = critic(roll["seq"][:, :-1], valid=roll["valid"][:, :-1])[:, roll["P"] - 1:]
        vl = ppo.value_loss(v, roll["values"], roll["returns"], roll["mask"], 0.2)
        vl.backward(), c_opt.step(), c_opt.zero_grad(set_to_none=True)
    up_times = timed_calls(update, ta.steps, ta.warmup)
    gen_s = statistics.median(gen_times)
    return {"params": actor.num_params(), "generate_ms": round(gen_s * 1e3, 2),
            "generated_tokens_per_s": round(B * shape.new_tokens / gen_s, 1),
            "update_ms": round(statistics.median(up_times) * 1e3, 2), "peak_bytes": peak_bytes()}


def _synthetic_rollout(seq, valid, P: int, gen) -> dict:
    B, R = seq.shape[0], seq.shape[1] - P
    mask = valid[:, P:].float()

    def rand():
        return torch.randn(B, R, device=seq.device, generator=gen) * mask
    return dict(seq=seq, valid=valid, mask=mask, P=P, logp=rand() - 5.0, values=rand(), adv=rand(), returns=rand())


# -- the run: one process per variant ---------------------------------------------------------
def run(ta: TrainArgs, command: str, progress: Callable[[str], None] = lambda s: None) -> dict:
    results = []
    for name in ta.models:
        p, runs = PRESETS[name], {v: [] for v in ta.variants}
        for r in range(ta.repeats):  # round r starts at the r-th variant: no side always goes first
            for variant in ta.variants[r % len(ta.variants):] + ta.variants[:r % len(ta.variants)]:
                progress(f"{name} {variant}" + (f" (round {r + 1} of {ta.repeats})" if ta.repeats > 1 else ""))
                failed = {"model": name, "variant": variant, "batch": ta.batch or p.batch, "seq": ta.seq or p.seq}
                runs[variant].append(in_worker({"job": "train", "variant": variant, "model": name}, ta, failed))
        results += [median_run(rows) for rows in runs.values()]
    ppo_result = None
    if ta.ppo is not None:
        progress(f"ppo ({ta.ppo.model} actor)")
        ppo_result = in_worker({"job": "ppo"}, ta, {"actor": ta.ppo.model, "batch": ta.ppo.batch,
                                                     "prompt_tokens": ta.ppo.prompt, "new_tokens": ta.ppo.new_tokens})
    backend = portkit.backend()
    return {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": command, "backend": backend.name, "device": backend.device_name(),
            "torch": torch.__version__, "ops_mode": registry.mode(), "peak_bf16_tflops": portkit.peak_bf16_tflops(),
            "flops_formula": FLOPS_FORMULA, "timing": TIMING, "data": DATA,
            "config": {**asdict(ta), "presets": {n: asdict(PRESETS[n]) for n in ta.models}},
            "results": results, "convergence": convergence(results), "overhead": overheads(results),
            "ppo": ppo_result}


TIMING = ("each variant in a fresh process; step_ms: mean over `steps` steps with one synchronisation at the end "
          "(tokens/s, MFU from it; sm_clock_mhz, power_w: the device's means over those steps, where readable); "
          "synced_step_ms: median of `steps` steps each synchronised; with --repeats, "
          "each variant's run of median step_ms (rounds in rotated order; runs_step_ms: every run's)")
DATA = (f"bytes of the Python standard library's source, not repeated; the same weights (seed 0) on every side; "
        f"lr {LR} warmed up over {LR_WARMUP} steps")
WORKER_TAG = "portkit-bench-result: "


def median_run(rows: list[dict]) -> dict:
    """A variant's run of median step time (the faster of two), with every run's step time;
    a failed run is reported as the failure."""
    failed = [r for r in rows if r.get("error")]
    if failed:
        return failed[0]
    ranked = sorted(rows, key=lambda r: r["step_ms"])
    return {**ranked[(len(ranked) - 1) // 2], "runs_step_ms": [r["step_ms"] for r in rows]}


def in_worker(job: dict, ta: TrainArgs, failed: dict) -> dict:
    """Run one job in a fresh Python process and return its result; if the process dies
    (its stderr is above), `failed` with the error, so the other variants still report."""
    job = {**job, "args": asdict(ta), "backend": portkit.backend().name}
    cmd = [sys.executable, "-m", "portkit.bench.train", "--worker", json.dumps(job)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    lines = [line for line in done.stdout.splitlines() if line.startswith(WORKER_TAG)]
    if done.returncode != 0 or not lines:
        return {**failed, "error": f"the worker process failed with exit code {done.returncode} (its stderr has why)"}
    return json.loads(lines[-1][len(WORKER_TAG):])


def worker(text: str) -> int:
    job = json.loads(text)
    args = job["args"]
    ppo = PPOShape(**args.pop("ppo")) if args.get("ppo") else None
    ta = TrainArgs(**{**args, "models": tuple(args["models"]), "variants": tuple(args["variants"]), "ppo": ppo})
    portkit.select_backend(job["backend"])
    result = measure_ppo(ta.ppo, ta) if job["job"] == "ppo" else train_variant(job["variant"], job["model"], ta)
    print(WORKER_TAG + json.dumps(result), flush=True)
    return 0


# -- presenting -------------------------------------------------------------------------------
HEADER = ["model", "variant", "batch x seq", "step ms", "synced ms", "host ms", "tokens/s", "TFLOP/s", "MFU",
          "peak mem", "loss", "note"]


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for r in report["results"]:
        if r["error"]:
            rows.append([r["model"], r["variant"], f"{r['batch']}x{r['seq']}", *["-"] * 8, r["error"]])
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] is not None else "n/a"
        synced, host = (f"{r[k]:.1f}" if k in r else "-" for k in ("synced_step_ms", "host_ms"))  # older reports
        rows.append([r["model"], r["variant"], f"{r['batch']}x{r['seq']}", f"{r['step_ms']:.1f}", synced, host,
                     f"{r['tokens_per_s']:,.0f}", f"{r['tflops']:.1f}", mfu, mem, f"{r['final_loss']:.3f}",
                     r["precision"] + _clocks_note(r)])
    return rows


def _clocks_note(r: dict) -> str:
    if r.get("sm_clock_mhz") is None:  # unreadable here, or an older report
        return ""
    return f", {r['sm_clock_mhz']:.0f} MHz {r['power_w']:.0f} W"


def convergence_lines(report: dict) -> list[str]:
    return [f"{c['model']} {c['variant']}: loss {c['loss']:.4f} vs {c['reference']} {c['reference_loss']:.4f} "
            f"({100 * c['relative']:+.2f}%, tolerance {100 * c['tolerance']:.0f}%): "
            f"{'matches' if c['passed'] else 'DOES NOT MATCH'}" for c in report.get("convergence", [])]


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"portkit bench train on {report['device']} ({report['backend']}), "
                        f"peak {report['peak_bf16_tflops'] or 'n/a'} TFLOP/s bf16")
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("model", "variant", "note") else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console = Console()
    console.width = max(console.width, 160)
    console.print(table)
    for line in convergence_lines(report):
        console.print(line)
    for o in report["overhead"]:
        console.print(f"{o['model']}: portkit-reference {o['portkit_reference_ms']:.1f} ms vs {o['peer']} "
                      f"{o['peer_ms']:.1f} ms: dispatch + patch overhead {o['overhead_pct']:+.2f}%")
    if report["ppo"]:
        console.print(_ppo_line(report["ppo"]))


def _ppo_line(r: dict) -> str:
    head = f"PPO ({r['actor']} actor, {r['batch']} prompts x {r['prompt_tokens']} + {r['new_tokens']} new)"
    if r["error"]:
        return f"{head}: {r['error']}"
    return (f"{head}: generation {r['generated_tokens_per_s']:,.0f} tokens/s ({r['generate_ms']:.1f} ms), "
            f"update step {r['update_ms']:.1f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2]))
    _parser = argparse.ArgumentParser(prog="portkit bench train")
    configure(_parser)
    sys.exit(main(_parser.parse_args()))
