"""A causal-attention block trained with NVIDIA apex's fused kernels, as written for GPUs."""
import json

import torch
from apex.normalization import FusedLayerNorm, FusedRMSNorm
from apex.optimizers import FusedAdam
import scaled_upper_triang_masked_softmax_cuda


class ScaledUpperTriangMaskedSoftmax(torch.autograd.Function):
    """Megatron's fused causal softmax (fused_kernels)."""

    @staticmethod
    def forward(ctx, inputs, scale):
        scale_t = torch.tensor([scale])
        softmax_results = scaled_upper_triang_masked_softmax_cuda.forward(inputs, scale_t[0])
        ctx.save_for_backward(softmax_results, scale_t)
        return softmax_results

    @staticmethod
    def backward(ctx, output_grads):
        softmax_results, scale_t = ctx.saved_tensors
        return scaled_upper_triang_masked_softmax_cuda.backward(output_grads, softmax_results, scale_t[0]), None


class Block(torch.nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.ln, self.qk, self.rms, self.out = FusedLayerNorm(d), torch.nn.Linear(d, 2 * d), FusedRMSNorm(d), torch.nn.Linear(d, d)

    def forward(self, x):  # x (B, T, d)
        q, k = self.qk(self.ln(x)).chunk(2, dim=-1)
        att = ScaledUpperTriangMaskedSoftmax.apply(q @ k.transpose(1, 2), q.size(-1) ** -0.5)  # (B, T, T)
        return self.out(self.rms(att @ x))


torch.manual_seed(0)
model = Block().cuda()
optimizer = FusedAdam(model.parameters(), lr=1e-2, weight_decay=0.1, adam_w_mode=True)
x, y = torch.randn(4, 16, 32).cuda(), torch.randn(4, 16, 32).cuda()
losses = []
for _ in range(3):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(json.dumps({"script": "apex_train.py", "losses": losses}))
