"""An ordinary apex user: trains a small model with apex's fused modules. Runs unchanged
under `python -m portkit.patches.apex apex_user_script.py OUT.json` where apex is absent."""
import json
import sys

import torch
from apex.normalization import FusedLayerNorm, FusedRMSNorm
from apex.optimizers import FusedAdam


class Block(torch.nn.Module):
    def __init__(self, d=24):
        super().__init__()
        self.ln, self.fc, self.rms, self.out = FusedLayerNorm(d), torch.nn.Linear(d, d), FusedRMSNorm(d), torch.nn.Linear(d, 1)

    def forward(self, x):
        return self.out(self.rms(torch.tanh(self.fc(self.ln(x)))))


torch.manual_seed(0)
model = Block()
opt = FusedAdam(model.parameters(), lr=1e-2, weight_decay=0.1)
x, y = torch.randn(64, 24), torch.randn(64, 1)
losses = []
for _ in range(5):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    losses.append(loss.item())
json.dump({"losses": losses, "params": [p.detach().flatten().tolist() for p in model.parameters()]},
          open(sys.argv[1], "w"))
