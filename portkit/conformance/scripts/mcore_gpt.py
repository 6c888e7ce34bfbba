"""Train a tiny GPT with Megatron-core, tensor and pipeline parallel, written for NVIDIA GPUs
in the style of megatron-core's examples/run_simple_mcore_train_loop.py.

    torchrun --nproc-per-node 4 mcore_gpt.py --tp 2 --pp 2
"""
import argparse
import json
import os
from functools import partial

import torch
from torch.optim import Adam
from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer.transformer_config import TransformerConfig

SEQ, VOCAB, MICRO_BATCH, MICROBATCHES, STEPS = 16, 64, 2, 2, 3
LAYERS, HIDDEN, HEADS, LR = 2, 32, 4, 1e-3


def initialize_distributed(tensor_model_parallel_size=1, pipeline_model_parallel_size=1):
    parallel_state.destroy_model_parallel()
    rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    torch.distributed.init_process_group(backend="nccl", world_size=world_size, rank=rank)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size, pipeline_model_parallel_size)


def init_weights(weight):
    """The same weights for every TP/PP layout: a fixed draw per tensor shape (megatron
    initialises the full matrix on the CPU, then keeps this rank's slice)."""
    g = torch.Generator().manual_seed(weight.numel())
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=g) * 0.02)


def model_provider(tp, pp, pre_process=True, post_process=True):
    # the parallel sizes belong in the config too: each pipeline stage builds num_layers / pp layers
    config = TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
                               tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                               use_cpu_initialization=True, pipeline_dtype=torch.float32,
                               hidden_dropout=0.0, attention_dropout=0.0,
                               init_method=init_weights, output_layer_init_method=init_weights)
    return GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
                    max_sequence_length=SEQ, pre_process=pre_process, post_process=post_process,
                    share_embeddings_and_output_weights=False)


def get_train_data_iterator():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (STEPS * MICROBATCHES, MICRO_BATCH, SEQ + 1), generator=g)
    return iter([{"tokens": t[:, :-1], "labels": t[:, 1:]} for t in tokens])


def forward_step_func(data_iterator, model):

    def loss_func(loss_mask, output_tensor):
        losses = output_tensor.float()
        loss_mask = loss_mask.view(-1).float()
        loss = torch.sum(losses.view(-1) * loss_mask) / loss_mask.sum()
        return loss, {"lm loss": loss}

    data = next(data_iterator)
    tokens, labels = data["tokens"].cuda(), data["labels"].to("cuda")
    position_ids = torch.arange(SEQ, device="cuda").unsqueeze(0).expand_as(tokens)
    attention_mask = torch.tril(torch.ones((1, SEQ, SEQ), device="cuda")).view(1, 1, SEQ, SEQ) < 0.5
    loss_mask = torch.ones(tokens.shape, device="cuda")
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels)
    return output_tensor, partial(loss_func, loss_mask)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    args = parser.parse_args()

    initialize_distributed(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    model_parallel_cuda_manual_seed(123)
    # each pipeline stage holds the embedding only if first and the output layer only if last
    gpt_model = model_provider(args.tp, args.pp, pre_process=parallel_state.is_pipeline_first_stage(),
                               post_process=parallel_state.is_pipeline_last_stage())
    gpt_model.cuda()
    optim = Adam(gpt_model.parameters(), lr=LR)
    train_iterator = get_train_data_iterator()
    forward_backward_func = get_forward_backward_func()

    losses = []
    for _ in range(STEPS):
        optim.zero_grad()
        losses_reduced = forward_backward_func(forward_step_func=forward_step_func, data_iterator=train_iterator,
                                               model=gpt_model, num_microbatches=MICROBATCHES, seq_length=SEQ,
                                               micro_batch_size=MICRO_BATCH, decoder_seq_length=SEQ,
                                               forward_only=False)
        optim.step()
        if parallel_state.is_pipeline_last_stage():
            # the schedule divides each microbatch's loss by MICROBATCHES in place: the sum is the mean
            losses.append(sum(r["lm loss"].item() for r in losses_reduced))
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        print(json.dumps({"script": "mcore_gpt.py", "tp": args.tp, "pp": args.pp,
                          "max_memory": torch.cuda.max_memory_allocated(), "losses": losses}))


if __name__ == "__main__":
    main()
