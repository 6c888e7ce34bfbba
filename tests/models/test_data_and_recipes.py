import json
from pathlib import Path

import pytest

from portkit.config import ConfigError
from portkit.models import data as D
from portkit.models import make_data
from portkit.models import recipe as R
from portkit.models.tokenizer import ByteTokenizer

RECIPES = Path(R.__file__).parent / "recipes"


def test_shipped_data_is_what_make_data_generates(tmp_path):
    make_data.write(tmp_path)
    for kind in D.SCHEMAS:
        assert (tmp_path / f"{kind}.jsonl").read_text() == D.default_path(kind).read_text(), kind


def test_preferences_follow_the_rule():
    rows = D.load_jsonl(D.default_path("reward_eval"), "reward_eval")
    assert all(make_data.solve(r["prompt"]) == r["chosen"] != r["rejected"] for r in rows)
    train_prompts = {r["prompt"] for kind in ("sft", "reward", "prompts") for r in D.load_jsonl(D.default_path(kind), kind)}
    assert not train_prompts & {r["prompt"] for r in rows}, "held-out prompts leak into training data"
    assert make_data.solve("sort: 3 1 2") == "1 2 3" and make_data.solve("reverse: abc") == "cba"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x"', r"bad.jsonl:2: not valid JSON"),
    ('{"prompt": "x"}', r"bad.jsonl:2: missing key 'response'"),
    ('{"prompt": "x", "response": 3}', r"bad.jsonl:2: key 'response' must be a string, got int"),
    ('["x"]', r"bad.jsonl:2: expected a JSON object"),
])
def test_data_errors_name_file_line_and_key(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b", "id": 1}\n' + line + "\n")
    with pytest.raises(D.DataError, match=message):
        D.load_jsonl(p, "sft")


def test_too_long_rows_are_named(tmp_path):
    rows = [{"prompt": "p" * 40, "response": "r"}]
    with pytest.raises(D.DataError, match="sft row 1: 45 tokens, longer than model.block_size 32"):
        D.sft_tensors(rows, ByteTokenizer(), 32)


def test_sft_targets_cover_the_response_only():
    tok = ByteTokenizer()
    d = D.sft_tensors([{"prompt": "ab", "response": "xy"}], tok, 32)
    kept = [int(t) for t in d.targets[0] if t != -100]
    assert kept == [ord("x"), ord("y"), tok.eos_id]


def _recipe(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("name: x\nmodel: {n_layers: 2}\n", r"r.yaml: recipe.model: unknown key 'n_layers'"),
    ("name: x\nsft: {steps: many}\n", r"r.yaml: recipe.sft.steps: expected int, got str 'many'"),
    ("name: x\ndata: {sft: nope.jsonl}\n", r"r.yaml: data.sft: no such file 'nope.jsonl'"),
    ("name: x\nmodel: {n_embd: 100, n_head: 3}\n", r"r.yaml: recipe.model: n_embd \(100\) must be divisible"),
    ("name: x\nstrategy: {name: fsdp}\n", r"r.yaml: recipe.strategy.name: 'fsdp' is not one of"),
    ("name: x\nstages: [sft, ppo]\n", r"ppo and rejection need the reward stage"),
    ("name: x\nppo: {rollout_batch: 10, minibatch: 4}\n", r"rollout_batch \(10\) must be a multiple of minibatch \(4\)"),
    ("model: {}\n", r"r.yaml: recipe: missing required key\(s\) name"),
    ("name: x\nbogus: 1\n", r"r.yaml: recipe: unknown key 'bogus'"),
])
def test_bad_recipes_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        R.load(_recipe(tmp_path, text))


def test_shipped_recipes_validate_and_data_paths_resolve(tmp_path):
    for path in RECIPES.glob("*.yaml"):
        R.load(path)
    (tmp_path / "mine.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    r = R.load(_recipe(tmp_path, "name: x\ndata: {sft: mine.jsonl}\n"))
    assert r.data.sft == str(tmp_path / "mine.jsonl")


def test_demonstrations_are_of_mixed_quality_and_eval_prompts_are_held_out():
    rows = D.load_jsonl(D.default_path("sft"), "sft")
    long = [r for r in rows if len(r["prompt"].partition(": ")[2].replace(" ", "")) >= make_data.STUTTER_LEN]
    short = [r for r in rows if r not in long]
    assert all(r["response"] == make_data.solve(r["prompt"]) for r in short)
    stuttered = [r for r in long if r["response"] != make_data.solve(r["prompt"])]
    assert all(r["response"] == make_data.stutter(make_data.solve(r["prompt"])) for r in stuttered)
    assert abs(len(stuttered) / len(long) - make_data.STUTTER_SHARE) < 0.03
    answers = [make_data.solve(r["prompt"]) for r in rows]  # a stutter is the only doubled character
    assert not any(a[i] == a[i + 1] for a in answers for i in range(len(a) - 1))
    held = {r["prompt"] for r in D.load_jsonl(D.default_path("reward_eval"), "reward_eval")}
    ppo = [r["prompt"] for r in D.load_jsonl(D.default_path("prompts"), "prompts")]
    assert len(held) >= 1000 and len(set(ppo)) == len(ppo) >= 2000 and not held & set(ppo)
    assert make_data.stutter("dcba") == "dcbaa" and make_data.stutter("1 2 9") == "1 2 99"
