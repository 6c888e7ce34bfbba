"""Causal attention at the 1.3B preset's shape (B=8, T=2048, 16 heads of 128, bf16): SDPA's
cuDNN and flash backends and FlashAttention-4 (flash-attn-4, CuTe kernels) where it imports,
forward and backward timed apart, each checked against the cuDNN side; then the internal calls a
FlashAttention-4 implementation of causal_attention_fwd/bwd would make.
Usage: python3 benchmarks/attention_probe.py [B T H D]; PORTKIT_SITE=<dir> adds a folder of
unpacked wheels (with its .pth files) first. Output: benchmarks/results/attention-*.log."""
import os, site, sys, time, statistics as st
if os.environ.get("PORTKIT_SITE"):
    site.addsitedir(os.environ["PORTKIT_SITE"])
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
B, T, H, D = (int(a) for a in (sys.argv[1:] or (8, 2048, 16, 128)))
torch.manual_seed(0)
qkv = torch.randn(B, T, H, 3, D, device="cuda", dtype=torch.bfloat16)
dy = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
flops = 4 * B * H * T * T * D / 2  # causal forward
def timeit(fn, n=20):
    for _ in range(3): fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in ev: s.record(); fn(); e.record()
    torch.cuda.synchronize(); return st.median(s.elapsed_time(e) for s, e in ev)
def run(attn):
    x = qkv.detach().requires_grad_()
    q, k, v = x.unbind(3)
    y = attn(q, k, v)
    return x, y
def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
sides = {}
for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash2", SDPBackend.FLASH_ATTENTION), ("default", None)):
    def attn(q, k, v, be=be):
        if be is None: return sdpa(q, k, v)
        with sdpa_kernel(be): return sdpa(q, k, v)
    sides[name] = attn
try:
    t = time.perf_counter()
    from flash_attn.cute import flash_attn_func
    def fa4(q, k, v):
        out = flash_attn_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out
    x, y = run(fa4); y.backward(dy); torch.cuda.synchronize()
    print(f"fa4 import + first call (JIT) {time.perf_counter() - t:.1f} s")
    sides["fa4"] = fa4
except Exception as e:
    import traceback; traceback.print_exc(); print("FA4 FAILED:", repr(e)[:400])
ref = None
for name, attn in sides.items():
    try:
        x, y = run(attn); y.backward(dy)
        got = (y.float(), x.grad.float())
        if ref is None: ref = got
        err = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, ref)]
        fwd = timeit(lambda: run(attn))
        def fb():
            x, y = run(attn); y.backward(dy)
        tot = timeit(fb); bwd = tot - fwd
        print(f"{name:8s} fwd {fwd:.3f} ms ({flops/fwd/1e9:.0f} TF/s)  bwd {bwd:.3f} ms ({2.5*flops/bwd/1e9:.0f} TF/s)  "
              f"fwd+bwd {tot:.3f}  rel err vs {list(sides)[0]} y {err[0]:.2e} dx {err[1]:.2e}")
    except Exception as e:
        print(name, "FAILED", repr(e)[:300])
# the calls portkit's op would make: _flash_attn_fwd / _flash_attn_bwd, and the backward
# writing dq, dk, dv straight into one (B, T, H, 3, D) gradient (no assembly copy)
try:
    from flash_attn.cute.interface import _flash_attn_fwd, _flash_attn_bwd
    q, k, v = qkv.unbind(3)
    out, lse = _flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5, causal=True, return_lse=True)[:2]
    print("lse", tuple(lse.shape), lse.dtype, "out", tuple(out.shape), out.stride())
    dq, dk, dv = _flash_attn_bwd(q, k, v, out, dy, lse, softmax_scale=D ** -0.5, causal=True)[:3]
    buf = torch.empty_like(qkv)
    r = _flash_attn_bwd(q, k, v, out, dy, lse, softmax_scale=D ** -0.5, causal=True,
                        dq=buf[:, :, :, 0], dk=buf[:, :, :, 1], dv=buf[:, :, :, 2])
    same = [torch.equal(a, b) for a, b in zip((dq, dk, dv), buf.unbind(3))]
    print("views filled in place:", same, "returned views:", [t.data_ptr() == b.data_ptr() for t, b in zip(r[:3], buf.unbind(3))])
    tf = timeit(lambda: _flash_attn_fwd(q, k, v, softmax_scale=D ** -0.5, causal=True, return_lse=True))
    tb = timeit(lambda: _flash_attn_bwd(q, k, v, out, dy, lse, softmax_scale=D ** -0.5, causal=True))
    tv = timeit(lambda: _flash_attn_bwd(q, k, v, out, dy, lse, softmax_scale=D ** -0.5, causal=True,
                                        dq=buf[:, :, :, 0], dk=buf[:, :, :, 1], dv=buf[:, :, :, 2]))
    ts = timeit(lambda: torch.stack((dq, dk, dv), 3))
    print(f"direct: fwd {tf:.3f} ms, bwd {tb:.3f} ms, bwd into views {tv:.3f} ms; stacking dq,dk,dv {ts:.3f} ms")
except Exception as e:
    import traceback; traceback.print_exc()
