"""Real launches: two CPU processes over gloo through torchrun, and the tiny recipe."""
import argparse
import textwrap
from pathlib import Path


from portkit import launch

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "recipes" / "tiny.yaml"

SCRIPT = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist
    import portkit
    dist.init_process_group(portkit.dist_backend())
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}"), "w") as f:
        f.write(f"{dist.get_rank()} {dist.get_world_size()} {t.item()} {os.environ['PORTKIT_BACKEND']} "
                f"{os.environ['LOCAL_RANK']}")
    dist.destroy_process_group()
""")


def run(*argv):
    p = argparse.ArgumentParser()
    launch.configure(p)
    return launch.main(p.parse_args(list(argv)))


def test_two_processes_all_reduce_over_gloo(tmp_path, monkeypatch, fresh_runtime):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    rc = run("--backend", "cpu", "--nproc-per-node", "2", "--", str(script), str(tmp_path))
    assert rc == 0
    lines = sorted((tmp_path / f"rank{r}").read_text() for r in range(2))
    assert lines == ["0 2 3.0 cpu 0", "1 2 3.0 cpu 1"]


def test_failing_job_returns_its_exit_code(tmp_path, monkeypatch, fresh_runtime):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(3)\n")
    assert run("--backend", "cpu", "--nproc-per-node", "2", "--", str(script)) != 0


def test_two_process_launch_of_the_tiny_recipe(tmp_path, monkeypatch, fresh_runtime):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe = tmp_path / "tiny-ddp.yaml"  # the tiny recipe, data-parallel over the two processes
    recipe.write_text(TINY.read_text() + "\nstrategy: {name: ddp}\n")
    out = tmp_path / "run"
    assert run("--backend", "cpu", "--nproc-per-node", "2", str(recipe), "--out", str(out), "--quiet") == 0
    assert (out / "report.json").is_file() and (out / "metrics.jsonl").read_text().strip()
