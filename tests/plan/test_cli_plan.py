"""`portkit plan` as a command: JSON, table, and errors that say what to change."""
import argparse
import json

from portkit.plan import cli as plan


def run(capsys, *argv):
    p = argparse.ArgumentParser(prog="portkit plan")
    plan.configure(p)
    rc = plan.main(p.parse_args(list(argv)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_for_gpt3_on_96_dgx_a100(capsys):
    rc, out, _ = run(capsys, "--model", "175b", "--tokens", "300e9", "--cluster", "dgx-a100-ib200",
                     "--nodes", "96", "--json")
    data = json.loads(out)
    assert rc == 0 and data["devices"] == 768 and data["global_batch"] == 1536
    best = data["best"]
    lay = best["layout"]
    assert lay["tp"] * lay["pp"] * lay["dp"] == 768 and best["fits"]
    assert best["memory_gb"]["total"] <= 72
    assert 35 <= best["days"] <= 65
    assert set(best["time_s"]) == {"compute", "elementwise", "tp_comm", "pp_comm", "bubble", "dp_comm", "optimizer"}
    assert [e["step_s"] for e in data["top"]] == sorted(e["step_s"] for e in data["top"])


def test_table_with_explicit_dimensions_and_fixed_layout(capsys):
    rc, out, _ = run(capsys, "--layers", "12", "--hidden", "768", "--heads", "12", "--seq", "1024",
                     "--tokens", "1e9", "--cluster", "dgx-h100", "--devices", "1", "--global-batch", "16",
                     "--micro-batch", "16", "--recompute", "selective")
    assert rc == 0
    assert "GPT 0.12B" in out and "selective" in out and "1 of 1 layouts fit" in out


def test_nothing_fits_says_so_and_what_to_do(capsys):
    rc, _, err = run(capsys, "--model", "175b", "--tokens", "1e9", "--cluster", "sugon-dcu")
    assert rc == 2 and "fits in memory" in err and "add nodes" in err


def test_custom_model_needs_all_dimensions(capsys):
    rc, _, err = run(capsys, "--layers", "4", "--tokens", "1e9", "--cluster", "dgx-h100")
    assert rc == 2 and "--hidden" in err and "--heads" in err
