"""Where a portkit/native loss gap comes from: every side from the same weights (and the native
peer from its own), on one repeated random batch and on text; step-0 gradients of Triton
against the reference ops. `python benchmarks/train_parity.py` (TINY=1: a CPU smoke run).
Its H200 output: benchmarks/results/parity-h200.log."""
import json, os, time
import torch
import portkit
portkit.select_backend(None)
import portkit.ops as ops
from portkit.ops import registry
from portkit.bench import train as bench
dev = portkit.device()
OUT = os.environ.get("OUT", "/tmp")
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
ALL = ["portkit", "portkit-ref", "native-bf16", "native-eager", "native-owninit"]

def batches(kind, p, B, T, steps):
    if kind == "repeat":
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, p.vocab, (B, T), generator=g); y = torch.randint(0, p.vocab, (B, T), generator=g)
        return [(x.to(dev), y.to(dev))] * steps
    t = bench.text_batches(steps, B, T).to(dev)
    return [(t[s, :, :-1], t[s, :, 1:]) for s in range(steps)]

def build(v, p, seq):
    pk = bench.portkit_gpt(p, seq)
    if v in ("portkit", "portkit-ref", "portkit-compiled"):
        m = pk.to(torch.bfloat16); opt = ops.FusedAdamW(m.parameters(), **ADAMW)
        return m, (torch.compile(m) if v == "portkit-compiled" else m), opt, False
    with torch.device(dev):
        nat = bench.NativeGPT(p, seq)
    if v != "native-owninit":
        nat.load_state_dict(bench.native_state(pk.state_dict(), p))
    del pk
    if v == "native-bf16":
        nat = nat.to(torch.bfloat16)
        return nat, nat, ops.FusedAdamW(nat.parameters(), **ADAMW), False
    opt = torch.optim.AdamW(nat.parameters(), **ADAMW, fused=True)
    return nat, (torch.compile(nat) if v == "native-compiled" else nat), opt, True

def run(v, p, seq, B, kind, steps):
    registry.set_mode("reference" if v in ("portkit-ref", "native-bf16") else None)
    m, sm, opt, ac = build(v, p, seq)
    losses = []
    for s, (x, y) in enumerate(batches(kind, p, B, seq, steps)):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=ac):
            loss = sm(x, y)
        loss.backward()
        if s == 0:
            grads = {n: q.grad.float().clone() for n, q in m.named_parameters()}
        opt.step(); opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
    out = [round(float(l), 4) for l in torch.stack(losses)]
    del m, sm, opt; torch._dynamo.reset(); getattr(torch, dev.type).empty_cache() if dev.type != 'cpu' else None
    registry.set_mode(None)
    return out, grads

res = {}
plan = [("tiny", ALL, ["repeat", "text"], 12)] if os.environ.get("TINY") else [
    ("124m", ALL, ["repeat", "text"], 40),
    ("350m", ALL, ["repeat", "text"], 30),
    ("1.3b", ["portkit", "native-eager", "native-owninit"], ["repeat", "text"], 25)]
for name, variants, kinds, steps in plan:
    p = bench.PRESETS[name]
    for kind in kinds:
        grads = {}
        for v in variants:
            t = time.time()
            l, g = run(v, p, p.seq, p.batch, kind, steps)
            grads[v] = g
            res[f"{name}/{kind}/{v}"] = l
            print(f"{name:5s} {kind:6s} {v:15s} {time.time()-t:5.1f}s  "
                  f"losses 0:{l[0]} 5:{l[5]} 10:{l[10]} -1:{l[-1]}  last5 {sum(l[-5:])/5:.4f}", flush=True)
        if "portkit-ref" in grads:
            a, b = grads["portkit"], grads["portkit-ref"]
            errs = sorted(((float((a[n]-b[n]).norm()/(b[n].norm()+1e-30)), n) for n in a), reverse=True)[:5]
            print(f"  grad rel err triton vs reference (worst 5): {[(round(e,4), n) for e, n in errs]}")
        if "native-bf16" in grads and "portkit-ref" in grads:
            a = grads["portkit-ref"]; b = grads["native-bf16"]
            bm = {}
            # map native grads back: compare just non-permuted keys
            for n in ("wte.weight", "ln_f.weight", "h.0.ln_1.weight", "h.0.mlp.c_proj.weight"):
                nn_ = n.replace("mlp.c_proj", "mlp_proj")
                print(f"  grad {n}: portkit-ref vs native-bf16 rel {float((a[n]-b[nn_]).norm()/b[nn_].norm()):.4f}")
        del grads
json.dump(res, open(f"{OUT}/diag.json", "w"), indent=0)
