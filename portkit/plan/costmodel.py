"""The cost model behind `portkit plan`: memory, FLOPs and time of one GPT training step
under a tensor/pipeline/data-parallel layout, and the search over layouts.

Formulas and their sources:
- parameters: 12*l*h^2 * (1 + 13/(12h) + (V+s)/(12*l*h))          (Narayanan et al. 2021, eq. 2)
- FLOPs per step, no recompute: 72*B*s*l*h^2 * (1 + s/(6h) + V/(12*l*h)); full recompute
  runs the layers' forward twice: 96*B*s*l*h^2 * (1 + s/(6h) + V/(16*l*h))   (same paper, eq. 3);
  selective recompute re-runs only the attention core, 4*B*s^2*h per layer
  (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models").
- activations per layer, bf16, sequence parallel over the TP group (Korthikanti et al. 2022):
  s*b*h*(34 + 5*a*s/h)/t without recompute, 34*s*b*h/t with selective, 2*s*b*h/t with full;
  the first pipeline stage of 1F1B holds min(p, m) micro-batches of its l/p layers.
- model states: 16 bytes per parameter for mixed-precision Adam (2 bf16 weights, 2 bf16
  gradients, 12 fp32 master/momentum/variance; 18 with Megatron's fp32 main gradients),
  divided by ZeRO stage over DP (Rajbhandari et al. 2020).
- pipeline bubble of 1F1B: (p-1)/m of the ideal time.
MFU counts model FLOPs (no recompute); HFU counts the FLOPs the hardware really runs.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from portkit.config import ConfigError, build, load_yaml

BF16 = 2
ADAM_STEP_BYTES = 30   # optimizer step traffic per parameter: read fp32 w, m, v, grad; write w, m, v, bf16 w
RECOMPUTE = ("none", "selective", "full")
Recompute = Literal["none", "selective", "full"]


@dataclass(frozen=True, kw_only=True, slots=True)
class GPT:
    layers: int
    hidden: int
    heads: int
    seq: int = 2048
    vocab: int = 50257

    def __post_init__(self):
        for name in ("layers", "hidden", "heads", "seq", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")

    @property
    def params(self) -> float:
        l, h, s, v = self.layers, self.hidden, self.seq, self.vocab
        return 12 * l * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * l * h))

    def layer_flops(self, tokens: float, seq: int | None = None) -> float:
        """Forward FLOPs of one transformer layer over `tokens` tokens (GEMMs + attention core)."""
        s = seq or self.seq
        return 24 * tokens * self.hidden ** 2 + 4 * tokens * s * self.hidden

    def model_flops(self, sequences: float) -> float:
        """FLOPs of forward + backward without recompute (the MFU numerator)."""
        l, h, s, v = self.layers, self.hidden, self.seq, self.vocab
        return 72 * sequences * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))

    def hardware_flops(self, sequences: float, recompute: str) -> float:
        """FLOPs the devices execute, recompute included (the HFU numerator)."""
        tokens = sequences * self.seq
        extra = {"none": 0.0, "selective": 4 * tokens * self.seq * self.hidden * self.layers,
                 "full": self.layer_flops(tokens) * self.layers}[recompute]
        return self.model_flops(sequences) + extra


# GPT-3 paper (Brown et al. 2020, Table 2.1) sizes; 30b/66b from OPT (Zhang et al. 2022, Table 1).
# 1.3b uses 32 heads (OPT) because GPT-3's 24 heads do not divide 2048.
# Default global batch in sequences of 2048 tokens follows the same tables.
PRESETS: dict[str, tuple[GPT, int]] = {
    "125m": (GPT(layers=12, hidden=768, heads=12), 256),
    "350m": (GPT(layers=24, hidden=1024, heads=16), 256),
    "760m": (GPT(layers=24, hidden=1536, heads=16), 256),
    "1.3b": (GPT(layers=24, hidden=2048, heads=32), 512),
    "2.7b": (GPT(layers=32, hidden=2560, heads=32), 512),
    "6.7b": (GPT(layers=32, hidden=4096, heads=32), 1024),
    "13b": (GPT(layers=40, hidden=5120, heads=40), 1024),
    "30b": (GPT(layers=48, hidden=7168, heads=56), 2048),
    "66b": (GPT(layers=64, hidden=9216, heads=72), 1024),
    "175b": (GPT(layers=96, hidden=12288, heads=96), 1536),
}


@dataclass(kw_only=True, slots=True)
class Stack:
    """The training software a cluster file's calibration was measured with, and what it offers."""
    name: str
    compute_efficiency: float     # fraction of peak the layers' math reaches end to end (see YAML)
    sequence_parallel: bool = True   # activations sharded over TP outside the GEMMs (Korthikanti)
    interleaved: bool = True      # virtual pipeline stages (Narayanan et al. 2021)
    recompute: list[Recompute] = field(default_factory=lambda: list(RECOMPUTE))
    zero: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    tp_comm_overlap: float = 0.0  # fraction of TP communication hidden behind compute
    dp_comm_overlap: float = 0.5  # fraction of DP gradient communication hidden behind backward
    grad_bytes: int = 4           # gradient buffer per parameter: 4 for fp32 main grads (Megatron bf16), 2 for bf16

    def __post_init__(self):
        if self.grad_bytes not in (2, 4):
            raise ValueError(f"grad_bytes must be 2 (bf16) or 4 (fp32), got {self.grad_bytes}")
        if not 0 < self.compute_efficiency <= 1:
            raise ValueError(f"compute_efficiency must be in (0, 1], got {self.compute_efficiency}")
        for name in ("tp_comm_overlap", "dp_comm_overlap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.recompute or any(z not in (0, 1, 2, 3) for z in self.zero) or not self.zero:
            raise ValueError(f"recompute {self.recompute} and zero {self.zero} must be non-empty; zero stages are 0-3")


@dataclass(kw_only=True, slots=True)
class Cluster:
    """One cluster kind, read from clusters/NAME.yaml. Bandwidths are one direction."""
    name: str
    description: str = ""
    devices_per_node: int
    device: str
    memory_gb: float              # device memory, GB (1e9 bytes)
    memory_reserve_gb: float      # runtime context, allocator fragmentation, communication buffers
    peak_tflops: float            # dense bf16 peak of one device
    hbm_gb_per_s: float           # device memory bandwidth (memory-bound kernels, optimizer step)
    intra_node_gb_per_s: float    # per device, within a node (NVLink, xGMI, PCIe)
    inter_node_gbit_per_s: float  # per node, all NICs together (line rate)
    comm_efficiency: float = 0.8  # fraction of link bandwidth a ring collective reaches
    stack: Stack
    sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name in ("devices_per_node", "memory_gb", "peak_tflops", "hbm_gb_per_s",
                     "intra_node_gb_per_s", "inter_node_gbit_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.comm_efficiency <= 1:
            raise ValueError(f"comm_efficiency must be in (0, 1], got {self.comm_efficiency}")
        if not 0 <= self.memory_reserve_gb < self.memory_gb:
            raise ValueError(f"memory_reserve_gb {self.memory_reserve_gb} must be below memory_gb {self.memory_gb}")

    @property
    def inter_node_bytes_per_device(self) -> float:
        return self.inter_node_gbit_per_s * 1e9 / 8 / self.devices_per_node

    @property
    def usable_bytes(self) -> float:
        return (self.memory_gb - self.memory_reserve_gb) * 1e9


def shipped_clusters() -> list[str]:
    folder = resources.files("portkit.plan") / "clusters"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_cluster(spec: str) -> Cluster:
    """A shipped cluster name (see shipped_clusters()) or a path to a cluster YAML."""
    path = Path(spec)
    if not path.suffix:
        shipped = resources.files("portkit.plan") / "clusters" / f"{spec}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"unknown cluster {spec!r}; shipped: {', '.join(shipped_clusters())}, "
                              "or give the path of a cluster YAML")
        path = Path(str(shipped))
    return build(Cluster, load_yaml(path), str(path))


@dataclass(frozen=True, slots=True)
class Layout:
    tp: int
    pp: int
    dp: int
    zero: int
    micro_batch: int
    recompute: str
    micro_batches: int       # per DP rank per step: global_batch / (dp * micro_batch)
    sp: bool = True          # sequence parallel (only meaningful with tp > 1)
    virtual: int = 1         # interleaved pipeline: model chunks per stage

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass(slots=True)
class Estimate:
    layout: Layout
    memory_gb: dict[str, float]   # per device, on the busiest pipeline stage
    fits: bool
    time_s: dict[str, float]      # breakdown of one step
    step_s: float
    mfu: float
    hfu: float
    tokens_per_s: float
    days: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- memory -----------------------------------------------------------------------------
def stage_params(m: GPT, tp: int, pp: int) -> float:
    """Parameters held by one device of the first stage (its layers plus the embedding)."""
    h = m.hidden
    per_layer = 12 * h * h + 13 * h
    return (per_layer * m.layers / pp + (m.vocab + m.seq) * h) / tp


def state_bytes(params: float, dp: int, zero: int, grad_bytes: int = 2) -> float:
    """Mixed-precision Adam: 2 + grad_bytes + 12 bytes per parameter (16 with bf16 gradients).
    ZeRO-1 shards the 12 optimizer bytes over DP, ZeRO-2 also the gradients, ZeRO-3 the weights."""
    weights, grads, optim = 2 * params, grad_bytes * params, 12 * params
    if zero >= 1:
        optim /= dp
    if zero >= 2:
        grads /= dp
    if zero >= 3:
        weights /= dp
    return weights + grads + optim


def act_units(m: GPT, tp: int, sp: bool, recompute: str) -> float:
    """Bytes kept per layer per token-of-hidden (s*b*h), Korthikanti et al. 2022, Table 2."""
    attn = 5 * m.heads * m.seq / m.hidden / tp   # softmax input/output, dropout mask
    outside = 34 / tp if sp else 10 + 24 / tp    # layer norms and dropouts: sharded only with SP
    if recompute == "full":
        return 2 / tp if sp else 2
    return outside + (attn if recompute == "none" else 0.0)


def memory(m: GPT, c: Cluster, lay: Layout) -> dict[str, float]:
    """Bytes per device on the first stage (most parameters, most micro-batches in flight)."""
    sbh = m.seq * lay.micro_batch * m.hidden
    in_flight = min(lay.pp, lay.micro_batches)  # 1F1B: the first stage holds p micro-batches
    if lay.virtual > 1:                         # interleaving keeps a little more (Korthikanti, sec. 4.2.3)
        in_flight *= 1 + (lay.pp - 1) / (lay.pp * lay.virtual)
    acts = sbh * act_units(m, lay.tp, lay.sp, lay.recompute) * m.layers / lay.pp * in_flight
    # working set of the layer in backward: its full activations (recomputed or kept) and their gradients
    acts += sbh * act_units(m, lay.tp, lay.sp, "none")
    logits = 4 * sbh / m.hidden * m.vocab / lay.tp  # fp32 logits for the loss on the last stage
    states = state_bytes(stage_params(m, lay.tp, lay.pp), lay.dp, lay.zero, c.stack.grad_bytes)
    return {"model_states": states, "activations": acts + logits, "total": states + acts + logits}


# -- time -------------------------------------------------------------------------------
def ring_time(nbytes: float, group: int, bw: float, c: Cluster, passes: float = 2.0) -> float:
    """Ring collective: all-reduce moves 2(g-1)/g of the data, reduce-scatter/all-gather (g-1)/g."""
    if group <= 1:
        return 0.0
    return passes * (group - 1) / group * nbytes / (bw * c.comm_efficiency)


def dp_bandwidth(c: Cluster, lay: Layout) -> float:
    """DP peers sit tp ranks apart; they share a node only while tp*dp fits in one."""
    if lay.tp * lay.dp <= c.devices_per_node:
        return c.intra_node_gb_per_s * 1e9
    return c.inter_node_bytes_per_device


def pp_bandwidth(c: Cluster, lay: Layout) -> float:
    """Stages follow DP in the rank order, so they cross nodes once tp*dp fills a node."""
    if lay.tp * lay.dp * lay.pp <= c.devices_per_node:
        return c.intra_node_gb_per_s * 1e9
    return c.inter_node_bytes_per_device


def micro_batch_time(m: GPT, c: Cluster, lay: Layout) -> dict[str, float]:
    """Forward + backward of one micro-batch on the last (slowest) stage, split by cause."""
    layers = m.layers / lay.pp
    b = lay.micro_batch
    logits = 6 * b * m.seq * m.hidden * m.vocab
    layer_flops = (m.hardware_flops(b, lay.recompute) - logits) / m.layers
    flops = (layer_flops * layers + logits) / lay.tp  # the last stage also runs the output layer
    compute = flops / (c.peak_tflops * 1e12 * c.stack.compute_efficiency)
    passes = 4 if lay.recompute == "full" else 3
    # memory-bound elementwise kernels (norms, GeLU, dropout, residuals): write + read of what they keep
    kept = 34 / lay.tp if lay.sp else 10 + 24 / lay.tp
    elementwise = passes * 2 * kept * b * m.seq * m.hidden * layers / (c.hbm_gb_per_s * 1e9)
    act = b * m.seq * m.hidden * BF16
    collectives = (6 if lay.recompute == "full" else 4) * layers  # 2 forward, 2 backward (+2 recompute)
    tp = collectives * ring_time(act, lay.tp, c.intra_node_gb_per_s * 1e9, c) * (1 - c.stack.tp_comm_overlap)
    pp = 2 * lay.virtual * act / lay.tp / pp_bandwidth(c, lay) if lay.pp > 1 else 0.0
    return {"compute": compute, "elementwise": elementwise, "tp_comm": tp, "pp_comm": pp}


def dp_time(m: GPT, c: Cluster, lay: Layout) -> float:
    """Gradient reduction (and ZeRO gathers) per step, before overlap."""
    params = stage_params(m, lay.tp, lay.pp)
    bw = dp_bandwidth(c, lay)
    grad = c.stack.grad_bytes
    if lay.zero == 0:
        t = ring_time(params * grad, lay.dp, bw, c)
    else:  # reduce-scatter the gradients, all-gather the updated bf16 weights
        t = ring_time(params * (grad + BF16), lay.dp, bw, c, passes=1)
    if lay.zero == 3:  # weights gathered again for forward and backward
        t += ring_time(params * BF16 * 2, lay.dp, bw, c, passes=1)
    return t


def step_time(m: GPT, c: Cluster, lay: Layout) -> dict[str, float]:
    mb = micro_batch_time(m, c, lay)
    per_mb = sum(mb.values())
    out = {k: v * lay.micro_batches for k, v in mb.items()}
    out["bubble"] = (lay.pp - 1) / lay.virtual * per_mb  # 1F1B: (p-1)/(v*m) of the ideal time
    out["dp_comm"] = dp_time(m, c, lay) * (1 - c.stack.dp_comm_overlap)
    shard = stage_params(m, lay.tp, lay.pp) / (lay.dp if lay.zero >= 1 else 1)
    out["optimizer"] = shard * ADAM_STEP_BYTES / (c.hbm_gb_per_s * 1e9)
    return out


def estimate(m: GPT, c: Cluster, lay: Layout, tokens: float) -> Estimate:
    mem = memory(m, c, lay)
    times = step_time(m, c, lay)
    step = sum(times.values())
    batch = lay.dp * lay.micro_batch * lay.micro_batches
    peak = lay.devices * c.peak_tflops * 1e12 * step
    steps = tokens / (batch * m.seq)
    return Estimate(layout=lay, memory_gb={k: v / 1e9 for k, v in mem.items()},
                    fits=mem["total"] <= c.usable_bytes, time_s=times, step_s=step,
                    mfu=m.model_flops(batch) / peak, hfu=m.hardware_flops(batch, lay.recompute) / peak,
                    tokens_per_s=batch * m.seq / step, days=steps * step / 86400)


# -- search -----------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class Constraints:
    """Fix any layout choice; None searches what the cluster's stack offers."""
    tp: int | None = None
    pp: int | None = None
    zero: int | None = None
    micro_batch: int | None = None
    recompute: str | None = None
    sp: bool | None = None
    virtual: int | None = None
    max_micro_batch: int = 16
    max_virtual: int = 8


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def parallel_sizes(m: GPT, c: Cluster, devices: int, global_batch: int, k: Constraints):
    """(tp, pp, dp): TP inside a node dividing the heads, PP dividing the layers, DP the batch."""
    for tp in divisors(min(c.devices_per_node, devices)):
        for pp in divisors(m.layers):
            if m.heads % tp or devices % (tp * pp) or k.tp not in (None, tp) or k.pp not in (None, pp):
                continue
            dp = devices // (tp * pp)
            if global_batch % dp == 0:
                yield tp, pp, dp


def layouts(m: GPT, c: Cluster, devices: int, global_batch: int, k: Constraints):
    """Every valid layout the stack (or the constraints) allow."""
    st = c.stack
    recomputes = [k.recompute] if k.recompute else st.recompute
    zeros = [k.zero] if k.zero is not None else st.zero
    sp = st.sequence_parallel if k.sp is None else k.sp
    for tp, pp, dp in parallel_sizes(m, c, devices, global_batch, k):
        per_rank = global_batch // dp
        for zero, mb, rc in itertools.product(zeros, divisors(per_rank), recomputes):
            if mb > k.max_micro_batch or k.micro_batch not in (None, mb) or (dp == 1 and zero > 0) \
                    or (pp > 1 and zero > 1):  # ZeRO-2/3 do not combine with pipelining
                continue
            for v in virtual_sizes(m, c, pp, per_rank // mb, k):
                yield Layout(tp, pp, dp, zero, mb, rc, per_rank // mb, sp and tp > 1, v)


def virtual_sizes(m: GPT, c: Cluster, pp: int, micro_batches: int, k: Constraints) -> list[int]:
    """Interleaving needs several layers per stage and a micro-batch count divisible by p."""
    if k.virtual is not None:
        return [k.virtual]
    if pp == 1 or not c.stack.interleaved or micro_batches % pp:
        return [1]
    return [v for v in divisors(m.layers // pp) if v <= k.max_virtual]


def search(m: GPT, c: Cluster, devices: int, global_batch: int, tokens: float,
           k: Constraints | None = None) -> tuple[list[Estimate], int]:
    """Estimates of the layouts that fit, fastest first (ties: less memory); and how many were tried."""
    k = k or Constraints()
    tried = [estimate(m, c, lay, tokens) for lay in layouts(m, c, devices, global_batch, k)]
    fit = [e for e in tried if e.fits]
    fit.sort(key=lambda e: (round(e.step_s, 9), e.memory_gb["total"], e.layout.zero, e.layout.virtual))
    return fit, len(tried)


def preset(name: str) -> tuple[GPT, int]:
    """A preset model and its default global batch (sequences)."""
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown model size {name!r}; presets: {', '.join(PRESETS)}, "
                          "or give --layers --hidden --heads")
    return PRESETS[key]
