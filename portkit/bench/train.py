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

Step time is the median wall time of a whole step (forward, backward, optimizer step,
synchronized) after the warmup steps; host time is the median time until the step's work
was issued: near the step time the run is host-bound (Python, dispatch, launches), well
below it the device is the limit and host-side overhead is hidden. MFU = flops per token * tokens/s / peak, with
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
import gc
import json
import math
import statistics
import sys
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
from portkit.ops import registry

SCHEMA = "portkit.bench.train/1"
VARIANTS = ("portkit", "portkit-compiled", "portkit-reference", "native-eager", "native-compiled", "native-bf16")
DEFAULT_VARIANTS = ("portkit", "portkit-reference", "native-eager", "native-compiled", "native-bf16")
REFERENCE_MODE = ("portkit-reference", "native-bf16")  # run with registry.set_mode("reference")
FLOPS_FORMULA = "6*N + 12*L*d*T flops per token (N: params without wpe; full T x T attention)"


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
    p.add_argument("--steps", type=int, default=20, help="timed steps, median taken (default %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default %(default)s)")
    p.add_argument("--batch", type=int, help="override the presets' batch size")
    p.add_argument("--seq", type=int, help="override the presets' sequence length")
    p.add_argument("--compile", action="store_true", help="add portkit-compiled (torch.compile of the portkit GPT)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled variants (default %(default)s)")
    p.add_argument("--ppo", action="store_true", help="also measure PPO generation and update on a 350M actor")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 steps: a smoke run that works on the CPU")
    p.add_argument("--backend", help="backend to run on (default: the best available)")
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


def parse(args: argparse.Namespace) -> TrainArgs:
    models = _split(args.models, PRESETS, "--models")
    variants = _split(args.variants, VARIANTS, "--variants")
    if args.compile and "portkit-compiled" not in variants:
        variants += ("portkit-compiled",)
    steps, warmup = args.steps, args.warmup
    if args.quick:
        models, steps, warmup = ("tiny",), 2, 1
    if steps < 1 or warmup < 0 or min(args.batch or 1, args.seq or 1) < 1:
        raise ValueError(f"--steps must be >= 1, --warmup >= 0, --batch/--seq >= 1 "
                         f"(got {steps}, {warmup}, {args.batch}, {args.seq})")
    ppo = (QUICK_PPO if args.quick else PPOShape()) if args.ppo else None
    return TrainArgs(models, variants, steps, warmup, args.batch, args.seq, args.compile_backend, ppo, args.quick)


def _split(text: str, allowed, flag: str) -> tuple[str, ...]:
    names = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"{flag} {text!r}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}")
    return names


def main(args: argparse.Namespace) -> int:
    try:
        ta = parse(args)
    except ValueError as e:
        print(f"portkit bench train: {e}", file=sys.stderr)
        return 2
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
    from portkit.models.gpt import GPT, GPTConfig
    cfg = GPTConfig(n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd, block_size=block_size, vocab_size=p.vocab,
                    norm="layernorm", pos="learned", mlp="gelu", bias=True)
    return GPT(cfg, head=head).to(device=portkit.device(), dtype=torch.bfloat16)


def build(variant: str, p: Preset, seq: int, compile_backend: str) -> Built:
    if variant.startswith("portkit"):
        model = portkit_gpt(p, seq)
        opt = ops.FusedAdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        step_model = torch.compile(model, backend=compile_backend) if variant == "portkit-compiled" else model
        return Built(model, step_model, opt, False, "bf16 params, fp32 masters", "portkit FusedAdamW")
    if variant == "native-bf16":
        model = NativeGPT(p, seq).to(device=portkit.device(), dtype=torch.bfloat16)
        opt = ops.FusedAdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        return Built(model, model, opt, False, "bf16 params, fp32 masters", "portkit FusedAdamW")
    model = NativeGPT(p, seq).to(portkit.device())
    opt, fused = native_adamw(model)
    step_model = torch.compile(model, backend=compile_backend) if variant == "native-compiled" else model
    return Built(model, step_model, opt, True, "fp32 params, bf16 autocast",
                 f"torch.optim.AdamW(fused={fused})")


def native_adamw(model: nn.Module) -> tuple[torch.optim.Optimizer, bool]:
    """torch.optim.AdamW(fused=True), or the foreach one where the device has no fused kernel
    (the report names which)."""
    kw = dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kw), True
    except RuntimeError as e:
        print(f"  torch.optim.AdamW(fused=True) unavailable on {portkit.device()}: {e}", file=sys.stderr)
        return torch.optim.AdamW(model.parameters(), **kw), False


def train_step(b: Built, x: torch.Tensor, y: torch.Tensor) -> float:
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if b.autocast else contextlib.nullcontext()
    with ctx:
        loss = b.step_model(x, y)
    loss.backward()
    b.opt.step()
    b.opt.zero_grad(set_to_none=True)
    return loss


# -- measuring --------------------------------------------------------------------------------
def flops_per_token(model: nn.Module, p: Preset, seq: int) -> float:
    n = sum(prm.numel() for name, prm in model.named_parameters() if not name.startswith("wpe."))
    return 6 * n + 12 * p.n_layer * p.n_embd * seq


def timed_steps(fn: Callable[[], object], steps: int, warmup: int) -> list[float]:
    """Seconds of each timed call, synchronized before and after."""
    for _ in range(warmup):
        fn()
    portkit.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        portkit.synchronize()
        times.append(time.perf_counter() - t)
    return times


def reset_peak() -> None:
    if portkit.backend().device_type != "cpu":
        portkit.synchronize()
        portkit.backend().reset_peak_memory()


def peak_bytes() -> Optional[int]:
    if portkit.backend().device_type == "cpu":
        return None
    portkit.synchronize()
    return portkit.backend().memory_stats()["peak_allocated"]


def release() -> None:
    torch._dynamo.reset()  # compiled graphs hold their model's parameters
    gc.collect()
    module = portkit.backend().module
    if hasattr(module, "empty_cache"):
        module.empty_cache()


@contextlib.contextmanager
def ops_mode(variant: str):
    before = registry.mode()
    if variant in REFERENCE_MODE:
        registry.set_mode("reference")
    try:
        yield registry.mode()
    finally:
        registry.set_mode(before)


def measure_variant(variant: str, name: str, p: Preset, ta: TrainArgs) -> dict:
    batch, seq = ta.batch or p.batch, ta.seq or p.seq
    row = {"model": name, "variant": variant, "batch": batch, "seq": seq, "layers": p.n_layer, "d_model": p.n_embd,
           "heads": p.n_head, "vocab": p.vocab, "error": None}
    reset_peak()
    try:
        with ops_mode(variant) as mode:
            row.update(ops_mode=mode, **_train(variant, p, batch, seq, ta))
    except torch.OutOfMemoryError as e:
        row["error"] = f"out of memory: {str(e).splitlines()[0]}"
    except Exception as e:  # a compile failure is a result of the compiled variants, recorded, not fatal
        if not variant.endswith("compiled"):
            raise
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    release()
    return row


def _train(variant: str, p: Preset, batch: int, seq: int, ta: TrainArgs) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, p.vocab, (batch, seq), generator=gen).to(portkit.device())
    y = torch.randint(0, p.vocab, (batch, seq), generator=gen).to(portkit.device())
    b = build(variant, p, seq, ta.compile_backend)
    losses, host = [], []

    def step():  # host: the seconds until the step's work is issued (the device may still run)
        t = time.perf_counter()
        losses.append(train_step(b, x, y).detach())
        host.append(time.perf_counter() - t)
    times = timed_steps(step, ta.steps, ta.warmup)
    step_s = statistics.median(times)
    tps = batch * seq / step_s
    fpt = flops_per_token(b.model, p, seq)
    peak = portkit.peak_bf16_tflops()
    out = {"params": sum(q.numel() for q in b.model.parameters()), "precision": b.precision,
           "optimizer": b.optimizer, "compiled": variant.endswith("compiled"),
           "step_ms": round(step_s * 1e3, 3), "step_ms_min": round(min(times) * 1e3, 3),
           "host_ms": round(statistics.median(host[ta.warmup:]) * 1e3, 3),
           "tokens_per_s": round(tps, 1), "tflops": round(fpt * tps / 1e12, 2),
           "mfu": round(fpt * tps / (peak * 1e12), 4) if peak else None,
           "peak_bytes": peak_bytes(), "final_loss": round(float(losses[-1]), 4)}
    del b, losses
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
    reset_peak()
    try:
        out.update(_ppo(p, shape, ta))
    except torch.OutOfMemoryError as e:
        out["error"] = f"out of memory: {str(e).splitlines()[0]}"
    release()
    return out


def _ppo(p: Preset, shape: PPOShape, ta: TrainArgs) -> dict:
    from portkit.models.rlhf import ppo
    from portkit.models.gpt import sequence_logprobs
    block = max(p.seq, shape.prompt + shape.new_tokens)
    actor, critic = portkit_gpt(p, block), portkit_gpt(p, block, head="scalar")
    dev, B = portkit.device(), shape.batch
    gen = torch.Generator(device=dev).manual_seed(0)
    idx = torch.randint(0, p.vocab, (B, shape.prompt), device=dev, generator=gen)
    valid = torch.ones_like(idx, dtype=torch.bool)

    def generate():
        return actor.generate(idx, valid, shape.new_tokens, eos_id=-1, pad_id=0, temperature=1.0,
                              generator=gen, early_stop=False)
    actor.eval()
    gen_times = timed_steps(generate, max(1, ta.steps // 4), 1)
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
    up_times = timed_steps(update, ta.steps, ta.warmup)
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


# -- the run ----------------------------------------------------------------------------------
def run(ta: TrainArgs, command: str, progress: Callable[[str], None] = lambda s: None) -> dict:
    results = []
    for name in ta.models:
        for variant in ta.variants:
            progress(f"{name} {variant}")
            results.append(measure_variant(variant, name, PRESETS[name], ta))
    ppo_result = None
    if ta.ppo is not None:
        progress(f"ppo ({ta.ppo.model} actor)")
        ppo_result = measure_ppo(ta.ppo, ta)
    backend = portkit.backend()
    return {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": command, "backend": backend.name, "device": backend.device_name(),
            "torch": torch.__version__, "ops_mode": registry.mode(), "peak_bf16_tflops": portkit.peak_bf16_tflops(),
            "flops_formula": FLOPS_FORMULA, "timing": "median wall time of synchronized steps after warmup",
            "config": {**asdict(ta), "presets": {n: asdict(PRESETS[n]) for n in ta.models}},
            "results": results, "overhead": overheads(results), "ppo": ppo_result}


# -- presenting -------------------------------------------------------------------------------
HEADER = ["model", "variant", "batch x seq", "step ms", "host ms", "tokens/s", "TFLOP/s", "MFU", "peak mem", "note"]


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for r in report["results"]:
        if r["error"]:
            rows.append([r["model"], r["variant"], f"{r['batch']}x{r['seq']}", "-", "-", "-", "-", "-", "-", r["error"]])
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] is not None else "n/a"
        host = f"{r['host_ms']:.1f}" if "host_ms" in r else "-"  # reports from before host_ms
        rows.append([r["model"], r["variant"], f"{r['batch']}x{r['seq']}", f"{r['step_ms']:.1f}", host,
                     f"{r['tokens_per_s']:,.0f}", f"{r['tflops']:.1f}", mfu, mem, r["precision"]])
    return rows


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
    _parser = argparse.ArgumentParser(prog="portkit bench train")
    configure(_parser)
    sys.exit(main(_parser.parse_args()))
