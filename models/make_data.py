"""Generate the embedded default data (deterministic): `python -m portkit.models.make_data [OUT_DIR]`.

Three small instruction tasks whose answers a rule can check (`solve`):
    reverse: abcd  -> dcba        sort: 3 1 2 -> 1 2 3        upper: abcd -> ABCD
Files (schema in portkit.models.data):
    sft.jsonl          {"prompt", "response"}             demonstrations of mixed quality (below)
    reward.jsonl       {"prompt", "chosen", "rejected"}   chosen = correct, rejected = a hand-made mistake
    reward_eval.jsonl  the same, on prompts held out from every other file: the reward model's
                       hand-made accuracy, and the prompts every policy is evaluated on
    prompts.jsonl      {"prompt"}                         for PPO and rejection sampling
The preference is verifiable: a response is right iff it equals solve(prompt).

The demonstrations are of mixed quality, as InstructGPT's were: on the long prompts (STUTTER_LEN
items or more) a share STUTTER_SHARE of the answers stutters, the last character repeated
(`stutter`: dcba -> dcbaa), the repetition language models are known for. Imitation learns the
mixture, so the SFT policy's greedy answer to a long prompt stutters; preferences between its
own samples, labelled by the rule, can teach it what imitation could not. No right answer has
two equal neighbouring characters (sort's items are distinct, reverse/upper's letters differ
from their neighbours), so a stutter is a mistake a reward model can see locally, at the end
of the answer. (A mistake seen only by recomputing the answer, such as the last character
replaced by its successor, left a small reward model at chance on the policy's own pairs.)
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from portkit import atomic

TASKS = ("reverse", "sort", "upper")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SIZES = {"sft": 4000, "reward": 8000, "reward_eval": 1200, "prompts": 4000}
STUTTER_LEN, STUTTER_SHARE = 5, 0.6   # 30% of all demonstrations are wrong (half the prompts are long)


def solve(prompt: str) -> str | None:
    """The correct response to a prompt of the family, None for any other prompt."""
    task, _, arg = prompt.partition(": ")
    if task == "reverse":
        return arg[::-1]
    if task == "sort":
        return " ".join(sorted(arg.split()))
    if task == "upper":
        return arg.upper()
    return None


def make_prompt(rng: random.Random) -> str:
    task, n = rng.choice(TASKS), rng.randint(3, 6)
    if task == "sort":  # distinct digits
        return "sort: " + " ".join(str(d) for d in rng.sample(range(10), n))
    letters = [rng.choice(LETTERS)]
    while len(letters) < n:  # no two equal neighbours
        letters.append(rng.choice(LETTERS.replace(letters[-1], "")))
    return f"{task}: " + "".join(letters)


def stutter(answer: str) -> str:
    """The answer with its last character repeated."""
    return answer + answer[-1]


def demonstrate(prompt: str, rng: random.Random) -> str:
    """A demonstrator's answer: right, or on a long prompt a stutter with probability STUTTER_SHARE."""
    right = solve(prompt)
    long = len(prompt.partition(": ")[2].replace(" ", "")) >= STUTTER_LEN
    return stutter(right) if long and rng.random() < STUTTER_SHARE else right


def corrupt(prompt: str, rng: random.Random) -> str:
    """A wrong answer of the kind a half-trained model gives."""
    task, _, arg = prompt.partition(": ")
    right = solve(prompt)
    for _ in range(20):
        wrong = _mistake(task, arg, right, rng)
        if wrong != right and wrong:
            return wrong
    return right + right[-1]


def _mistake(task: str, arg: str, right: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    items = right.split() if task == "sort" else list(right)
    join = " ".join if task == "sort" else "".join
    if kind == 0:  # did not follow the instruction
        return arg
    if kind == 1 and len(items) > 1:  # two neighbours swapped
        i = rng.randrange(len(items) - 1)
        items[i], items[i + 1] = items[i + 1], items[i]
        return join(items)
    if kind == 2:  # one item dropped or repeated
        i = rng.randrange(len(items))
        return join(items[:i] + items[i + 1:]) if rng.random() < 0.5 else join(items[:i + 1] + items[i:])
    i = rng.randrange(len(items))  # one item replaced
    items[i] = str(rng.randint(0, 9)) if task == "sort" else rng.choice(LETTERS if task != "upper" else LETTERS.upper())
    return join(items)


def generate(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    held_out: set[str] = set()
    while len(held_out) < SIZES["reward_eval"]:
        held_out.add(make_prompt(rng))
    eval_prompts = sorted(held_out)
    rng.shuffle(eval_prompts)

    def fresh() -> str:
        while (p := make_prompt(rng)) in held_out:
            pass
        return p

    out = {"sft": [{"prompt": p, "response": demonstrate(p, rng)} for p in (fresh() for _ in range(SIZES["sft"]))]}
    out["reward"] = [_pair(fresh(), rng) for _ in range(SIZES["reward"])]
    out["reward_eval"] = [_pair(p, rng) for p in eval_prompts]
    ppo: dict[str, None] = {}  # distinct, in the order drawn
    while len(ppo) < SIZES["prompts"]:
        ppo[fresh()] = None
    out["prompts"] = [{"prompt": p} for p in ppo]
    return out


def _pair(prompt: str, rng: random.Random) -> dict:
    return {"prompt": prompt, "chosen": solve(prompt), "rejected": corrupt(prompt, rng)}


def write(directory: Path, seed: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in generate(seed).items():
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic.write(directory / f"{name}.jsonl", text)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data")
