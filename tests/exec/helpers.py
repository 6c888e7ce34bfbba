"""Run a CUDA-style script through `portkit exec` / `portkit launch`, and the same script
edited by hand for the CPU, and read the JSON line each prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from portkit.conformance.unchanged import SCRIPTS, hand_edited, plain_env  # noqa: F401 (one copy, shipped with portkit)

VENV_BIN = Path(sys.executable).parent
BACKENDS = ["cpu", "testvendor"]  # the cpu backend and the test plugin's CPU stand-in
TIMEOUT = 300


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "PORTKIT_BACKEND"}
    return {**base, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": base.get("TORCH_EXTENSIONS_DIR", "/tmp/portkit-ext"),
            **extra}


TEARDOWN_ABORT = "terminate called without an active exception"  # gloo at interpreter exit, after the work


def run(argv: list[str], cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    for _ in range(3):  # a rerun on gloo's teardown abort: seen on the 2-core machines, twice in a row under load
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env(**extra), cwd=cwd)
        if done.returncode == 0 or TEARDOWN_ABORT not in done.stderr:
            break
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def result(done: subprocess.CompletedProcess) -> dict:
    """The last JSON line the script printed."""
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in the output:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])


def portkit_exec(script: str, backend: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "portkit"), "exec", "--backend", backend, "--", str(SCRIPTS / script), *args], **extra)


def portkit_launch(script: str, backend: str, nproc: int, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "portkit"), "launch", "--backend", backend, "--nproc-per-node", str(nproc),
                "--", str(SCRIPTS / script), *args], **extra)


def python(path: Path, *args: str, nproc: int = 1, **extra: str) -> subprocess.CompletedProcess:
    """The script on plain torch, with conformance's exit drain (gloo's abort at exit, torch alone)."""
    extra = {"PYTHONPATH": plain_env(dict(os.environ))["PYTHONPATH"], **extra}
    if nproc == 1:
        return run([sys.executable, str(path), *args], cwd=path.parent, **extra)
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                str(path), *args], cwd=path.parent, **extra)


def assert_same_losses(got: list[float], want: list[float], rel: float = 1e-4) -> None:
    assert len(got) == len(want) and got, f"{got} vs {want}"
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= rel * abs(b), f"step {step}: loss {a} through portkit vs {b} hand-edited for the CPU"
