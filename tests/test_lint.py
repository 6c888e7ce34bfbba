"""Portability lint: torch.cuda is called only inside backends/ and patches/.

Everywhere else the device-neutral API answers (portkit.device(), portkit.synchronize(),
portkit.memory_stats(), portkit.manual_seed(), the backend's `module`). A line that truly
needs torch.cuda carries the escape comment `# portkit: allow-cuda` with its reason.
"""
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["portkit", "models", "tuning"]
# Scripts written the way CUDA users write them, run unchanged by `portkit exec` (their point).
CUDA_STYLE = ROOT / "portkit" / "conformance" / "scripts"
ESCAPE = "# portkit: allow-cuda"


def cuda_calls(source: str) -> list[int]:
    """Line numbers where code (not strings or comments) says torch.cuda."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type in (tokenize.NAME, tokenize.OP)]
    return [a.start[0] for a, b, c in zip(toks, toks[1:], toks[2:])
            if (a.string, b.string, c.string) == ("torch", ".", "cuda")]


def offending_lines(folder: Path) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*.py") if CUDA_STYLE not in p.parents):
        lines = path.read_text().splitlines()
        for no in cuda_calls(path.read_text()):
            if ESCAPE not in lines[no - 1]:
                found.append(f"{path.relative_to(ROOT)}:{no}: {lines[no - 1].strip()}")
    return found


def test_no_torch_cuda_outside_backends_and_patches():
    found = [line for name in CHECKED for line in offending_lines(ROOT / name)]
    assert not found, ("torch.cuda used outside backends/ and patches/; use portkit.device(), "
                       "portkit.synchronize(), portkit.memory_stats() or portkit.backend().module "
                       f"instead, or add '{ESCAPE}' with a reason:\n" + "\n".join(found))


def test_lint_catches_a_planted_call(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\nx = torch.cuda.current_device()\n")
    (tmp_path / "ok.py").write_text(f"y = 'torch.cuda'  # a string, not a call\nz = torch.cuda.is_available()  {ESCAPE}: why\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert offending_lines(tmp_path) == ["bad.py:2: x = torch.cuda.current_device()"]
    finally:
        ROOT = saved
