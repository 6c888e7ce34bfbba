"""Run a CUDA-style script through `portkit exec` / `portkit launch`, and the same script
edited by hand for the CPU, and read the JSON line each prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"
VENV_BIN = Path(sys.executable).parent
BACKENDS = ["cpu", "testvendor"]  # the cpu backend and the test plugin's CPU stand-in
TIMEOUT = 300


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "PORTKIT_BACKEND"}
    return {**base, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": base.get("TORCH_EXTENSIONS_DIR", "/tmp/portkit-ext"),
            **extra}


def run(argv: list[str], cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env(**extra), cwd=cwd)
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


def hand_edited(script: str, edits: list[tuple[str, str]], tmp: Path) -> Path:
    """The script as an engineer edits it for the CPU: each edit must apply, and no CUDA
    name may remain, so the copy runs on plain torch without portkit."""
    text = (SCRIPTS / script).read_text()
    for old, new in edits:
        assert old in text, f"edit of {script} no longer applies: {old!r}"
        text = text.replace(old, new)
    code = "\n".join(line.split("#")[0] for line in text.split('"""', 2)[-1].splitlines())
    left = [w for w in ("torch.cuda", "'cuda", '"cuda', "nccl") if w in code]
    assert not left, f"hand-edited {script} still says {left}"
    path = tmp / script
    path.write_text(text)
    return path


def python(path: Path, *args: str, nproc: int = 1, **extra: str) -> subprocess.CompletedProcess:
    if nproc == 1:
        return run([sys.executable, str(path), *args], cwd=path.parent, **extra)
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                str(path), *args], cwd=path.parent, **extra)


def assert_same_losses(got: list[float], want: list[float], rel: float = 1e-4) -> None:
    assert len(got) == len(want) and got, f"{got} vs {want}"
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= rel * abs(b), f"step {step}: loss {a} through portkit vs {b} hand-edited for the CPU"
