"""A script that imports apex's fused modules runs unchanged with apex absent, through the
shim, and trains exactly as the same model written with torch modules."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).with_name("apex_user_script.py")


class TorchRMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TorchBlock(torch.nn.Module):
    def __init__(self, d=24):
        super().__init__()
        self.ln, self.fc, self.rms, self.out = torch.nn.LayerNorm(d), torch.nn.Linear(d, d), TorchRMSNorm(d), torch.nn.Linear(d, 1)

    def forward(self, x):
        return self.out(self.rms(torch.tanh(self.fc(self.ln(x)))))


def torch_reference() -> dict:
    torch.manual_seed(0)
    model = TorchBlock()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # FusedAdam's adam_w_mode=True
    x, y = torch.randn(64, 24), torch.randn(64, 1)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "params": [p.detach().flatten().tolist() for p in model.parameters()]}


def test_apex_script_runs_unchanged_and_matches_torch(tmp_path):
    assert "portkit" not in SCRIPT.read_text().split('"""')[2]  # the script itself knows only apex
    out = tmp_path / "apex.json"
    cmd = [sys.executable, "-m", "portkit.patches.apex", str(SCRIPT), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-4000:]
    got, ref = json.loads(out.read_text()), torch_reference()
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5, abs=1e-6)
    assert got["losses"][-1] < got["losses"][0]
    for p, q in zip(got["params"], ref["params"]):
        assert p == pytest.approx(q, rel=1e-4, abs=1e-5)


def test_apex_script_fails_clearly_without_the_shim(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x.json")], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode != 0 and "No module named 'apex'" in done.stderr
