"""`portkit scan`: fixture files whose lines say what the scan must find (`# expect: ...`),
the backend deciding verdicts, the adaptation data deciding "handled", the CLI, and the
torch.cuda count of the installed megatron-core against a plain text count."""
import importlib.util
import io
import json
import re
import tokenize
from collections import Counter
from pathlib import Path

import pytest

from portkit import cli, runtime, scan
from portkit.patches import apex as apex_shim

HERE = Path(__file__).parent
PROJECT = HERE / "fixtures" / "project"
ROOT = HERE.parents[1]


def expected(folder: Path) -> Counter:
    """(file, line, verdict) from the fixtures' `# expect: v1, v2 (note)` comments."""
    found = Counter()
    for f in sorted(folder.glob("*.py")):
        for no, line in enumerate(f.read_text().splitlines(), 1):
            m = re.search(r"# expect: (.*)$", line)
            for item in m.group(1).split(",") if m else []:
                found[(f.name, no, item.split()[0])] += 1
    return found


def backend(name):
    return runtime.backends()[name]


def test_fixture_uses_match_their_expect_comments_on_cpu():
    report = scan.scan(PROJECT, backend("cpu"))
    got = Counter((u["file"], u["line"], u["verdict"]) for u in report["uses"])
    assert got == expected(PROJECT)
    assert report["summary"]["verdicts"] == {"handled": 23, "native": 1, "attention": 18, "triton": 0,
                                             "cannot_tell": 6}
    assert report["summary"]["adaptations"] == {"torch.cuda": 5, "apex shim": 6, "device string": 3, "amp": 3,
                                                "nccl": 2, "deepspeed": 1, "colossalai": 1, "megatron-core": 1,
                                                ".cuda()": 1}
    assert report["files"] == 5 and [u["file"] for u in report["unparsed"]] == ["broken.py"]
    assert "SyntaxError" in report["unparsed"][0]["error"]


def test_dynamic_uses_are_cannot_tell():
    uses = scan.scan(PROJECT / "dynamic.py", backend("cpu"))["uses"]
    assert sorted(u["what"] for u in uses if u["verdict"] == "cannot_tell") == [
        "compared with 'nccl'", "device name built at run time", "getattr(torch, 'cuda')",
        "getattr(torch.cuda, ...)", "torch.cuda"]


def by_what(report) -> dict:
    return {u["what"]: (u["verdict"], u["how"]) for u in report["uses"]}


def test_the_backend_decides_rocm():
    """rocm (not available here): torch.cuda is native, its own variable and SMI tool are named."""
    uses = by_what(scan.scan(PROJECT, backend("rocm")))
    assert uses["torch.cuda.CUDAGraph"][0] == uses["torch.cuda.set_device"][0] == uses["NCCL_DEBUG"][0] == "native"
    assert uses["CUDA_VISIBLE_DEVICES"][0] == "attention"  # set inside the script: too late to be copied
    assert "set HIP_VISIBLE_DEVICES instead" in uses["CUDA_VISIBLE_DEVICES"][1]
    assert "use rocm-smi on rocm" in uses["nvidia-smi"][1]
    assert uses["Triton kernel add_kernel"][0] == "triton" and "portable to ROCm" in uses["Triton kernel add_kernel"][1]
    assert uses["torch.float8_e4m3fn"][0] == "cannot_tell"  # its capabilities need the device
    assert uses["import flash_attn"][0] == "attention"


def test_the_backend_decides_cuda_itself():
    uses = by_what(scan.scan(PROJECT, backend("cuda")))
    assert {uses[w][0] for w in ("CUDA_VISIBLE_DEVICES", "nvidia-smi", "import flash_attn", "torch.version.cuda",
                                 "torch.utils.cpp_extension.CUDAExtension", "compared with 'cuda'")} == {"native"}
    assert uses["import apex.amp"][0] == "attention"  # apex.amp is gone from NVIDIA apex too


def test_triton_check_hook_flags_kernels_that_do_not_compile():
    def check(file, kernel, b):
        return "gfx906 is not a Triton target" if kernel == "scale_kernel" else None
    uses = by_what(scan.scan(PROJECT / "kernels.py", backend("rocm"), triton_check=check))
    assert uses["Triton kernel add_kernel"][0] == "triton"
    assert uses["Triton kernel scale_kernel"] == ("attention", "does not compile for rocm: gfx906 is not a Triton target")


def test_handled_follows_the_adaptation_code(monkeypatch):
    """The verdicts come from the shim's SERVED table and the CPU device module, not a copy."""
    served = dict(apex_shim.SERVED)
    del served["apex.optimizers"]
    monkeypatch.setattr(apex_shim, "SERVED", served)
    monkeypatch.setattr(type(backend("cpu").module), "CUDAGraph", object, raising=False)
    uses = by_what(scan.scan(PROJECT, backend("cpu")))
    assert uses["import apex.optimizers.FusedAdam"][0] == "attention"
    assert uses["torch.cuda.CUDAGraph"] == ("handled", "torch.cuda")


def test_cli_report_and_json(tmp_path, capsys):
    out = tmp_path / "scan.json"
    assert cli.main(["scan", str(PROJECT), "--backend", "cpu", "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "23 of 48 uses adapted automatically" in text and "train.py:28" in text and "broken.py" in text
    assert json.loads(out.read_text())["summary"]["uses"] == 48


@pytest.mark.parametrize("argv, message", [
    (["scan", "/no/such/dir"], "portkit scan: /no/such/dir: no such file or directory"),
    (["scan", str(PROJECT), "--backend", "nope"], "portkit scan: unknown backend 'nope'; installed:"),
    (["scan", str(PROJECT), "--json-out", "/no/such/dir/x.json"], "portkit scan: cannot write --json-out"),
])
def test_cli_errors_exit_2_without_traceback(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


# -- megatron-core: the scan's torch.cuda count against a plain text count ------------------
def text_lines(root: Path) -> dict:
    """(file, line) -> text of every line containing 'torch.cuda.', as grep finds them."""
    return {(str(p.relative_to(root)), no): line for p in sorted(root.rglob("*.py"))
            for no, line in enumerate(p.read_text().splitlines(), 1) if "torch.cuda." in line}


def code_lines(path: Path) -> set[int]:
    """Lines where 'torch.cuda.' is code (NAME/OP tokens), not a comment or a string."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            if t.type in (tokenize.NAME, tokenize.OP)]
    return {a.start[0] for a, b, c, d in zip(toks, toks[1:], toks[2:], toks[3:])
            if (a.string, b.string, c.string, d.string) == ("torch", ".", "cuda", ".")}


def test_megatron_core_torch_cuda_count_agrees_with_grep_within_5_percent():
    root = Path(importlib.util.find_spec("megatron.core").submodule_search_locations[0])
    report = scan.scan(root, backend("cpu"))
    ours = Counter((u["file"], u["line"]) for u in report["uses"] if u["what"].startswith("torch.cuda"))
    grep = text_lines(root)
    assert report["unparsed"] == [] and report["summary"]["torch_cuda"] == sum(ours.values())
    assert abs(sum(ours.values()) - len(grep)) <= 0.05 * len(grep), (sum(ours.values()), len(grep))
    # the difference, explained: grep also counts comments, strings and import lines ...
    for (file, no), line in grep.items():
        if (file, no) not in ours:
            is_import = re.match(r"\s*(from|import) torch\.cuda", line)
            assert is_import or no not in code_lines(root / file), f"{file}:{no} missed: {line.strip()}"
    # ... and the scan also counts uses through aliases (`from torch.cuda import nvtx`), which grep misses
    aliasing = re.compile(r"^\s*(from torch\.cuda[.\w]* import|import torch\.cuda\S* as|from torch import cuda)", re.M)
    for file, no in ours:
        assert (file, no) in grep or aliasing.search((root / file).read_text()), f"{file}:{no}"


def test_every_handled_verdict_names_existing_tests():
    """docs/scan.md maps each adaptation to the tests of that adaptation; each test named exists."""
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", (ROOT / "docs" / "scan.md").read_text(), re.M))
    assert set(scan.ADAPTATIONS) <= set(rows), f"no row in docs/scan.md for {set(scan.ADAPTATIONS) - set(rows)}"
    for key in scan.ADAPTATIONS:
        nodes = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", rows[key])
        assert nodes, f"{key}: no test named"
        for path, name in nodes:
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name} does not exist"


def test_the_backend_decides_xpu_and_npu_from_their_device_modules():
    """xpu: torch.xpu (in every torch build) answers; npu: torch.npu needs torch_npu, absent here."""
    xpu = by_what(scan.scan(PROJECT / "train.py", backend("xpu")))
    assert xpu["torch.cuda.set_device"] == ("handled", "torch.cuda")
    assert xpu["torch.cuda.nvtx.range_push"][0] == "attention"
    npu = by_what(scan.scan(PROJECT / "train.py", backend("npu")))
    assert npu["torch.cuda.set_device"] == ("cannot_tell", "torch.npu is not importable here (install torch_npu to check)")
    assert "set ASCEND_RT_VISIBLE_DEVICES instead" in npu["CUDA_VISIBLE_DEVICES"][1]


def test_exec_test_scripts_scan_as_portkit_exec_runs_them():
    """The CUDA-style scripts `portkit exec` runs in tests/exec and the conformance suite: every use is handled on cpu but
    the deliberate CUDAGraph call (which exec answers with the fix) and two branches on 'cuda'."""
    report = scan.scan(ROOT / "portkit" / "conformance" / "scripts", backend("cpu"))
    assert report["summary"]["verdicts"] == {"handled": 89, "native": 0, "attention": 1, "triton": 0, "cannot_tell": 2}
    (attention,) = [u for u in report["uses"] if u["verdict"] == "attention"]
    assert (attention["file"], attention["what"]) == ("cuda_calls.py", "torch.cuda.CUDAGraph")
    assert report["summary"]["adaptations"] == {"torch.cuda": 31, "device string": 14, ".cuda()": 14, "colossalai": 6,
                                                "megatron-core": 6, "amp": 5, "nccl": 6, "apex shim": 4,
                                                "deepspeed": 3}
