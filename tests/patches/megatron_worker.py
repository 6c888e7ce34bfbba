"""Trains a tiny Megatron-core GPT for a few steps through portkit; run under torchrun.

    python -m torch.distributed.run --nproc-per-node 2 megatron_worker.py --tp 2 --out losses.json

Rank 0 writes {"losses": [...], "world": N, "tp": T, "device": ...} to --out.
"""
import argparse
import json
import os

import torch

import portkit
from portkit.patches import megatron

SEQ, VOCAB, BATCH = 32, 128, 4


def build_model(tp: int):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, tensor_model_parallel_size=tp,
                               use_cpu_initialization=True, params_dtype=torch.float32,
                               hidden_dropout=0.0, attention_dropout=0.0)
    model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(),
                     vocab_size=VOCAB, max_sequence_length=SEQ)
    return model.to(portkit.device())


def batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g).to(portkit.device())
    position_ids = torch.arange(SEQ, device=tokens.device).expand(BATCH, SEQ)
    causal = torch.triu(torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool, device=tokens.device), diagonal=1)
    return tokens[:, :-1], position_ids, causal, tokens[:, 1:]


def norm_class(model) -> str:
    return next(type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__)


def train(tp: int, steps: int) -> tuple[list[float], str]:
    model = build_model(tp)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids, pos, mask, labels = batch()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, pos, mask, labels=labels).float().mean()  # per-token losses (B, T)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, norm_class(model)


def rng_fork_isolated() -> bool:
    """The model-parallel RNG tracker's fork draws from its own stream and restores the
    default one: the default stream after a fork equals the stream without the fork."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    portkit.manual_seed(5)
    plain = torch.rand(4, device=portkit.device())
    portkit.manual_seed(5)
    with get_cuda_rng_tracker().fork():
        forked = torch.rand(4, device=portkit.device())
    after = torch.rand(4, device=portkit.device())
    return bool(torch.equal(plain, after) and not torch.equal(plain, forked))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    p.add_argument("--apex-shim", action="store_true", help="install portkit's apex shim before Megatron imports")
    args = p.parse_args()
    if args.apex_shim:
        from portkit.patches import apex
        apex.install()
    megatron.init(tp=args.tp, seed=1234)
    rng_ok = rng_fork_isolated()
    losses, norm = train(args.tp, args.steps)
    if torch.distributed.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"losses": losses, "world": torch.distributed.get_world_size(), "tp": args.tp,
                       "device": str(portkit.device()), "rng_fork_isolated": rng_ok,
                       "norm": norm,
                       "patches": {p.name: p.state for p in megatron.PATCHES}}, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
