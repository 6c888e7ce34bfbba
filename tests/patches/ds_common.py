"""The tiny model, data and optimizer shared by the framework workers and their references.

Every run starts from the same weights (seed 0) and sees the same global batches, so a
data-parallel run over N processes must reproduce the single-process losses.
"""
import torch

SEED, BATCH, STEPS, D_IN, D_HID, N_CLASSES = 0, 8, 4, 16, 32, 4
LR, WEIGHT_DECAY = 1e-2, 0.01


def make_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, D_HID), torch.nn.GELU(), torch.nn.Linear(D_HID, N_CLASSES))


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(SEED + 1)
    return [(torch.randn(BATCH, D_IN, generator=g), torch.randint(0, N_CLASSES, (BATCH,), generator=g))
            for _ in range(STEPS)]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), target)


def reference_losses() -> list[float]:
    """The same training in one process, whole global batch at once."""
    model = make_model()
    optimizer = make_optimizer(model)
    losses = []
    for x, y in batches():
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RETRYABLE = ("address already in use", "terminate called without an active exception")


def torchrun(script: str, args: list[str], nproc: int = 2, backend: str | None = "cpu",
             timeout: float = 300, env: dict | None = None) -> "subprocess.CompletedProcess":
    """Run `script` under torch.distributed.run on this host; raise with its output on failure."""
    import os
    import subprocess
    import sys
    # faulthandler: a worker that aborts prints its Python stacks
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **(env or {}))
    env.pop("PORTKIT_BACKEND", None)
    if backend is not None:
        env["PORTKIT_BACKEND"] = backend
    # retry once: a port taken between free_port() and the rendezvous, or a worker that finished
    # and then aborted in gloo's teardown at exit (seen once on the 2-core CI machine)
    for attempt in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        output = (done.stdout + done.stderr).lower()
        if done.returncode == 0 or not any(m in output for m in RETRYABLE):
            break
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    return done
