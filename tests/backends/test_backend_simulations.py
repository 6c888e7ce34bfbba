"""Built-in backends on hardware we do not have, against faithful simulations of their
documented interfaces (tests named `simulated`), and CUDA on a real GPU (marked gpu)."""
import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import portkit
from portkit import doctor, runtime
from portkit.backends import rocm

GiB = 2**30


def write_tool(bin_dir, name, cases):
    """An executable SMI stand-in: prints cases[first argument] ('' = no argument)."""
    bin_dir.mkdir(exist_ok=True)
    branches = "".join(f"  {shlex.quote(arg)}) cat <<'EOF'\n{textwrap.dedent(text).strip()}\nEOF\n  ;;\n"
                       for arg, text in cases.items())
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\ncase \"$1\" in\n{branches}  *) echo \"unknown option $1\" >&2; exit 2;;\nesac\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PORTKIT_BACKEND", "PORTKIT_PLUGINS")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


# -- ROCm / DCU: torch with version.hip set and torch.cuda answering -------------------
HY_SMI = {
    "": """
        ============================ System Management Interface =============================
        ======================================================================================
        DCU     Temp     AvgPwr     Perf     PwrCap     VRAM%      DCU%      Mode
        0       46.0C    118.0W     auto     400.0W     0%         0%        Normal
        1       44.0C    115.0W     auto     400.0W     3%         12%       Normal
        ======================================================================================
        =================================== End of SMI Log ===================================
    """,
    "--showdriverversion": """
        ============================ System Management Interface =============================
        ======================================================================================
        Driver Version: 6.3.27-V1.2.5
        ======================================================================================
        =================================== End of SMI Log ===================================
    """,
    "--showproductname": """
        ============================ System Management Interface =============================
        ====================================== Product Info ======================================
        DCU[0]          : Card Series:          K100_AI
        DCU[0]          : Card Vendor:          Chengdu Haiguang IC Design Co., Ltd.
        DCU[1]          : Card Series:          K100_AI
        DCU[1]          : Card Vendor:          Chengdu Haiguang IC Design Co., Ltd.
        ======================================================================================
        =================================== End of SMI Log ===================================
    """,
}


@pytest.fixture
def rocm_torch(monkeypatch, tmp_path, fresh_runtime):
    """A ROCm build of torch seeing `count` devices named `name` with gfx `arch`; PATH holds only tmp_path/bin."""
    def install(name, arch, count=2):
        props = types.SimpleNamespace(name=name, total_memory=64 * GiB, gcnArchName=f"{arch}:sramecc+:xnack-",
                                      major=9, minor=4)
        cuda = torch.cuda
        monkeypatch.setattr(torch.version, "hip", "6.3.25213-0fd2c8a3c")
        for attr, value in {"is_available": lambda: True, "device_count": lambda: count,
                            "get_device_name": lambda i=None: name, "get_device_properties": lambda i=None: props,
                            "current_device": lambda: 0, "is_bf16_supported": lambda *a, **k: True}.items():
            monkeypatch.setattr(cuda, attr, value)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
        for var in ("DTK", "ROCM_PATH"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(rocm, "HYHAL_DIR", str(tmp_path / "opt" / "hyhal"))
        monkeypatch.setattr(rocm, "DTK_GLOB", str(tmp_path / "opt" / "dtk*"))
        (tmp_path / "bin").mkdir(exist_ok=True)
    return install


def test_rocm_dcu_simulated(rocm_torch, tmp_path):
    rocm_torch("K100_AI", "gfx928")
    write_tool(tmp_path / "bin", "hy-smi", HY_SMI)
    dtk = tmp_path / "opt" / "dtk-24.04.3"
    dtk.mkdir(parents=True)
    (dtk / "env.sh").write_text("export ROCM_PATH=/opt/dtk\n")

    chosen = portkit.select_backend()
    assert chosen.name == "rocm"
    assert "ROCm build" in runtime.backends()["cuda"].probe()
    assert portkit.dist_backend() == "nccl" and portkit.device() == torch.device("cuda", 0)
    assert chosen.visible_devices_env == "HIP_VISIBLE_DEVICES"
    assert chosen.launch_env()["HSA_FORCE_FINE_GRAIN_PCIE"] == "1"
    info = chosen.describe()
    assert info["flavour"] == "dcu" and info["flavour_evidence"] == "hy-smi on PATH"
    assert info["smi_tool"] == "hy-smi" and info["smi_found"] == str(tmp_path / "bin" / "hy-smi")
    assert info["versions"] == {"torch": torch.__version__, "hip": "6.3.25213-0fd2c8a3c",
                                "driver": "6.3.27-V1.2.5", "dtk": "24.04.3"}
    assert info["dtk"] == {"path": str(dtk), "version": "24.04.3", "env_sh": True}
    assert info["smi_products"] == ["K100_AI", "K100_AI"]
    assert [(r["DCU"], r["VRAM%"], r["DCU%"]) for r in info["smi_devices"]] == [("0", "0%", "0%"), ("1", "3%", "12%")]
    assert info["devices"] == ["K100_AI", "K100_AI"] and info["peak_bf16_tflops"] is None  # no public DCU figure
    assert info["capabilities"]["bf16"] and not info["capabilities"]["fp8"]


def test_rocm_dcu_without_hy_smi_on_path_simulated(rocm_torch, tmp_path, monkeypatch):
    """Inside a container: /opt/hyhal mounted, hy-smi not on PATH, DTK named by $DTK."""
    rocm_torch("BW1000", "gfx936")
    hal_bin = tmp_path / "opt" / "hyhal" / "bin"
    hal_bin.mkdir(parents=True)
    write_tool(hal_bin, "hy-smi", HY_SMI)
    dtk = tmp_path / "dtk"
    (dtk / ".info").mkdir(parents=True)
    (dtk / ".info" / "version").write_text("25.04\n")
    monkeypatch.setenv("DTK", str(dtk))
    info = portkit.select_backend("rocm").describe()
    assert info["flavour"] == "dcu" and "hyhal" in info["flavour_evidence"]
    assert info["smi_found"] == str(hal_bin / "hy-smi") and info["versions"]["driver"] == "6.3.27-V1.2.5"
    assert info["dtk"] == {"path": str(dtk), "version": "25.04", "env_sh": False}


def test_rocm_amd_simulated(rocm_torch, tmp_path):
    rocm_torch("AMD Instinct MI300X", "gfx942", count=8)
    write_tool(tmp_path / "bin", "rocm-smi", {"--showdriverversion": """
        ============================ ROCm System Management Interface ============================
        Driver version: 6.8.5
        ==================================== End of ROCm SMI Log =================================
    """})
    info = portkit.select_backend().describe()
    assert info["name"] == "rocm" and info["flavour"] == "amd" and "dtk" not in info
    assert info["smi_tool"] == "rocm-smi" and info["versions"]["driver"] == "6.8.5"
    assert info["peak_bf16_tflops"] == 1307.4 and info["device_count"] == 8
    assert info["capabilities"]["fp8"] and info["capabilities"]["flash_attention"]


def test_doctor_on_dcu_simulated(rocm_torch, tmp_path, capsys):
    rocm_torch("K100_AI", "gfx928")
    write_tool(tmp_path / "bin", "hy-smi", HY_SMI)
    report = doctor.collect()
    json.dumps(report)  # plain data all the way down
    row = next(b for b in report["backends"] if b["name"] == "rocm")
    assert report["selected"]["name"] == "rocm" and row["flavour"] == "dcu"
    doctor.render(report)
    text = capsys.readouterr().out
    assert "backend rocm" in text and "6.3.27-V1.2.5" in text and "dcu" in text


def test_doctor_dcu_readiness_simulated(rocm_torch, tmp_path, monkeypatch, capsys):
    """doctor --backend rocm on a simulated K100-AI (gfx928): DTK, hy-smi, RCCL settings,
    the kernels compiled for gfx928 (none with upstream Triton: unverified) and each op's fallback."""
    rocm_torch("K100_AI", "gfx928")
    write_tool(tmp_path / "bin", "hy-smi", HY_SMI)
    dtk = tmp_path / "opt" / "dtk-24.04.3"
    dtk.mkdir(parents=True)
    (dtk / "env.sh").write_text("export ROCM_PATH=/opt/dtk\n")
    root = tmp_path / "root"
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "proc" / "sys" / "kernel" / "numa_balancing").write_text("1\n")
    (root / "proc" / "cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 iommu=pt quiet\n")
    monkeypatch.setattr(rocm, "SYSTEM_ROOT", str(root))
    monkeypatch.delenv("HSA_FORCE_FINE_GRAIN_PCIE", raising=False)

    report = doctor.collect("rocm")
    json.dumps(report)
    ready = report["readiness"]
    assert ready["DTK"] == [{"path": str(dtk), "version": "24.04.3",
                             "env.sh": "present, not sourced (ROCM_PATH does not point at it)"}]
    assert [(r["DCU"], r["DCU%"]) for r in ready["hy-smi"]] == [("0", "0%"), ("1", "12%")]
    rccl = {r["setting"]: (r["current"], r["ok"]) for r in ready["RCCL settings (tuning profile dcu-rocm)"]}
    assert rccl == {"numa_balancing": ("1", False), "iommu": ("iommu=pt", True), "HSA_FORCE_FINE_GRAIN_PCIE": (None, False)}
    [kernels] = ready["portkit Triton kernels for gfx928"]
    assert kernels["status"] == "unverified" and "unsupported target: 'gfx928'" in kernels["regs/spills/LDS/occupancy"]
    ops = {r["op"]: r for r in ready["op fallbacks"]}
    assert ops["rms_norm_fwd"] == {"op": "rms_norm_fwd", "selected": "triton", "Triton kernel here": "does not compile",
                                   "without it": "aten"}
    assert ops["swiglu_fwd"]["without it"] == "reference (torch)"
    doctor.render(report)
    text = capsys.readouterr().out
    assert "readiness: DTK" in text and "readiness: op fallbacks" in text and "unverified" in text


def test_parse_hy_smi_table_ignores_banners():
    rows = rocm.parse_hy_smi_table(textwrap.dedent(HY_SMI[""]))
    assert rows[1] == {"DCU": "1", "Temp": "44.0C", "AvgPwr": "115.0W", "Perf": "auto", "PwrCap": "400.0W",
                       "VRAM%": "3%", "DCU%": "12%", "Mode": "Normal"}
    assert rocm.parse_hy_smi_table("no table here\n") == []


# -- NPU / MLU: a fake torch extension module on sys.path, run in a fresh interpreter --
# PrivateUse1 can be renamed once per process, as the real extensions do, so each
# simulation gets its own interpreter.
FAKE_EXTENSION = '''
"""A stand-in for {ext}: importing it adds torch.{dev} with the extension's documented calls."""
import sys
import types

import torch

__version__ = "{version}"
state = {{"device": 0, "seed": None, "synchronized": 0}}
mod = types.ModuleType("{ext}.{dev}")


def is_available():
    return True


def device_count():
    return {count}


def get_device_name(device=None):
    return "{name}"


def current_device():
    return state["device"]


def set_device(device):
    state["device"] = device.index if isinstance(device, torch.device) else int(device)


def synchronize(device=None):
    state["synchronized"] += 1


def manual_seed_all(seed):
    state["seed"] = seed


def memory_allocated(device=None):
    return 1024


def max_memory_allocated(device=None):
    return 2048


def memory_reserved(device=None):
    return 4096


def reset_peak_memory_stats(device=None):
    pass


def is_bf16_supported():
    return True


def _is_in_bad_fork():
    return False


def get_device_properties(device=None):
    return types.SimpleNamespace(name="{name}", total_memory=64 * 2**30)


for _fn in (is_available, device_count, get_device_name, current_device, set_device, synchronize,
            manual_seed_all, memory_allocated, max_memory_allocated, memory_reserved,
            reset_peak_memory_stats, is_bf16_supported, get_device_properties, _is_in_bad_fork):
    setattr(mod, _fn.__name__, _fn)
mod.state = state
{extra}
torch.utils.rename_privateuse1_backend("{dev}")
torch._register_device_module("{dev}", mod)
sys.modules["{ext}.{dev}"] = mod
'''

PROBE = """
import json, torch, portkit
from portkit import runtime
b = portkit.select_backend()
b.set_device(3)
portkit.manual_seed(7)
portkit.synchronize()
mod = getattr(torch, b.device_type)
print(json.dumps({"name": b.name, "device": str(portkit.device()), "dist": portkit.dist_backend(),
                  "visible": b.visible_devices_env, "launch_env": b.launch_env(), "describe": b.describe(),
                  "state": mod.state, "memory": portkit.memory_stats(),
                  "cuda_declines": runtime.backends()["cuda"].probe() is not None}))
"""

NPU_SMI = """
    +------------------------------------------------------------------------------------------------+
    | npu-smi 23.0.6                   Version: 23.0.6                                               |
    +---------------------------+---------------+----------------------------------------------------+
    | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
    | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
    +===========================+===============+====================================================+
    | 0     910B3               | OK            | 93.1        36                0    / 0             |
    | 0                         | 0000:C1:00.0  | 0           0    / 0          3378 / 65536         |
    +===========================+===============+====================================================+
"""

CNMON = """
    +------------------------------------------------------------------------------+
    | CNMON v5.10.22                                               Driver v5.10.22 |
    +-------------------------------+----------------------+-----------------------+
    | Card  VF  Name       Firmware |               Bus-Id | Util        Ecc-Error |
    | Fan   Temp      Pwr:Usage/Cap |         Memory-Usage | Mode     Compute-Mode |
    |===============================+======================+=======================|
    | 0     /   MLU370-X8    v1.1.4 |         0000:3B:00.0 | 0%                  0 |
    |  0%   35C         60 W/ 250 W |     0 MiB/ 23374 MiB | FULL          Default |
    +-------------------------------+----------------------+-----------------------+
"""


def simulate_extension(tmp_path, ext, dev, name, smi, smi_cases, extra=""):
    site = tmp_path / "site" / ext
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(FAKE_EXTENSION.format(ext=ext, dev=dev, name=name, count=8,
                                                            version="2.6.0.post3", extra=extra))
    write_tool(tmp_path / "bin", smi, smi_cases)
    env = clean_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
                    PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_common(out, name, dev, dist, visible, driver):
    assert (out["name"], out["device"], out["dist"], out["visible"]) == (name, f"{dev}:3", dist, visible)
    assert out["state"] == {"device": 3, "seed": 7, "synchronized": 1}
    assert out["memory"] == {"allocated": 1024, "peak_allocated": 2048, "reserved": 4096, "total": 64 * GiB}
    assert out["cuda_declines"]
    info = out["describe"]
    assert info["available"] and info["device_count"] == 8 and info["versions"]["driver"] == driver


def test_npu_simulated(tmp_path):
    extra = "\ndef npu_fusion_attention(*args, **kwargs):\n    raise RuntimeError('no kernels in the fake')\n"
    out = simulate_extension(tmp_path, "torch_npu", "npu", "Ascend910B3", "npu-smi", {"info": NPU_SMI}, extra)
    assert_common(out, "npu", "npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES", "23.0.6")
    info = out["describe"]
    assert info["versions"]["torch_npu"] == "2.6.0.post3" and info["peak_bf16_tflops"] == 320.0
    assert info["capabilities"]["bf16"] and info["capabilities"]["flash_attention"]
    assert out["launch_env"] == {"HCCL_CONNECT_TIMEOUT": "1200"}


def test_mlu_simulated(tmp_path):
    out = simulate_extension(tmp_path, "torch_mlu", "mlu", "MLU370-X8", "cnmon", {"": CNMON})
    assert_common(out, "mlu", "mlu", "cncl", "MLU_VISIBLE_DEVICES", "5.10.22")
    info = out["describe"]
    assert info["smi_tool"] == "cnmon" and info["versions"]["torch_mlu"] == "2.6.0.post3"
    assert info["peak_bf16_tflops"] is None and not info["capabilities"]["flash_attention"]


def test_builtin_backend_facts(fresh_runtime):
    facts = {n: (b.device_type, b.dist_backend, b.visible_devices_env, b.smi_tool)
             for n, b in runtime.backends().items() if n in ("cuda", "npu", "mlu", "xpu", "cpu")}
    assert facts == {"cpu": ("cpu", "gloo", None, None),
                     "cuda": ("cuda", "nccl", "CUDA_VISIBLE_DEVICES", "nvidia-smi"),
                     "npu": ("npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES", "npu-smi"),
                     "mlu": ("mlu", "cncl", "MLU_VISIBLE_DEVICES", "cnmon"),
                     "xpu": ("xpu", "xccl", "ZE_AFFINITY_MASK", "xpu-smi")}


def test_cuda_peak_table_matches_most_specific_name(fresh_runtime, monkeypatch):
    backend = runtime.backends()["cuda"]
    for name, peak in {"NVIDIA H100 PCIe": 756.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0,
                       "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA B200": 2250.0, "NVIDIA GeForce RTX 3090": None}.items():
        monkeypatch.setattr(backend, "device_name", lambda index=0, n=name: n)
        assert backend.peak_bf16_tflops() == peak, name


# -- real hardware --------------------------------------------------------------------
@pytest.mark.gpu
def test_doctor_shows_cuda_on_a_real_gpu():
    done = subprocess.run([sys.executable, "-m", "portkit.cli", "doctor", "--json"], capture_output=True,
                          text=True, env=clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    cuda = next(b for b in report["backends"] if b["name"] == "cuda")
    assert cuda["available"], cuda["reason"]
    assert cuda["devices"][0] == torch.cuda.get_device_name(0)
    assert cuda["device_count"] == torch.cuda.device_count()
    assert report["selected"]["name"] == "cuda"
    assert cuda["versions"]["driver"] and cuda["versions"]["cuda_runtime"] == torch.version.cuda
    assert cuda["capabilities"]["bf16"]
    if any(k in cuda["devices"][0] for k in ("H100", "H200")):
        assert cuda["peak_bf16_tflops"] in (989.0, 756.0, 835.0)
        assert cuda["capabilities"]["fp8"] and cuda["capabilities"]["flash_attention"]
    print(json.dumps(cuda, indent=2))
