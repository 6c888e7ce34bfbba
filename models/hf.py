"""Load a local Hugging Face GPT-2-style checkpoint directory (config.json plus
model.safetensors or pytorch_model.bin; vocab.json + merges.txt for its tokenizer)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from portkit.errors import UserError
from portkit.models.gpt import GPT, GPTConfig

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh GELU of ops.bias_gelu
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # Conv1D


class CheckpointFormatError(UserError, ValueError):
    pass


def read_config(directory: Path) -> GPTConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{directory}: no config.json; not a Hugging Face checkpoint directory")
    c = json.loads(path.read_text())
    if c.get("model_type") != "gpt2":
        raise CheckpointFormatError(f"{path}: model_type {c.get('model_type')!r} is not supported (only 'gpt2')")
    act = c.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointFormatError(f"{path}: activation_function {act!r} is not supported ({', '.join(ACTIVATIONS)})")
    return GPTConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["n_positions"],
                     vocab_size=c["vocab_size"], norm="layernorm", pos="learned", mlp="gelu", bias=True,
                     dropout=0.0, norm_eps=c.get("layer_norm_epsilon", 1e-5))


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointFormatError(f"{st}: reading safetensors needs the 'safetensors' package") from None
        return load_file(str(st))
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise CheckpointFormatError(f"{directory}: neither model.safetensors nor pytorch_model.bin")


def convert(hf: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT-2 names and layouts -> this model's: Conv1D weights transposed, c_attn's rows
    reordered from (3, nh, hs) to per-head (nh, 3, hs)."""
    out = {}
    for name, t in hf.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers; the lm head is tied to wte
        if name.endswith(TRANSPOSED):
            t = t.t()
        if ".attn.c_attn." in name:
            t = t.reshape(3, cfg.n_head, cfg.head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        out[name.replace(".mlp.c_fc.bias", ".mlp.fc_bias")] = t.contiguous()
    return out


def load_gpt2(directory: str | Path, head: str = "lm") -> GPT:
    directory = Path(directory)
    cfg = read_config(directory)
    model = GPT(cfg, head=head)
    state = convert(read_weights(directory), cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith("score.")]
    if missing or unexpected:
        raise CheckpointFormatError(f"{directory}: weights do not fit a GPT-2 of this config: "
                                    f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
