"""`portkit run RECIPE.yaml [--backend NAME] [--resume] [--out DIR] [--quiet]`

Loads and validates the recipe, selects the backend (--backend > recipe `backend:` >
PORTKIT_BACKEND > auto), sets the ops mode, starts the strategy (under torchrun: one
process per device, process group on portkit.dist_backend()), runs the stages with
checkpoints, and writes DIR/metrics.jsonl, DIR/report.md, DIR/report.json and DIR/*.png.
PORTKIT_KILL_AFTER_STEPS=N ends the process abruptly after N steps (to test --resume).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

import portkit
from portkit import faults
from portkit.errors import UserError, contained
from portkit.models import data as D
from portkit.models import recipe as R
from portkit.models import strategies
from portkit.ops import FusedAdamW
from portkit.models.checkpoint import Checkpoints
from portkit.models.gpt import GPT
from portkit.models.hf import load_gpt2, read_config
from portkit.models.progress import Progress
from portkit.models.resume import prepare_out
from portkit.models.tokenizer import ByteTokenizer, GPT2BPE

KILL_ENV = "PORTKIT_KILL_AFTER_STEPS"


class Rng:
    """A stage's random streams: one on the CPU (data order), one on the device (sampling)."""

    def __init__(self, seed: int, device: torch.device):
        self.cpu = torch.Generator().manual_seed(seed)
        self.dev = self.cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed + 1)

    def state_dict(self):
        return {"cpu": self.cpu.get_state(), "dev": self.dev.get_state()}

    def load_state_dict(self, state):
        self.cpu.set_state(state["cpu"].cpu())
        self.dev.set_state(state["dev"].cpu())


class Run:
    """What the stages share: recipe, strategy, tokenizer, data, checkpoints, metrics."""

    def __init__(self, recipe: R.Recipe, out: Path, strategy, resume: bool, quiet: bool):
        self.recipe, self.out, self.strategy, self.resume = recipe, out, strategy, resume
        self.device = strategy.device()
        self.tok = GPT2BPE(recipe.init) if recipe.init else ByteTokenizer()
        self.model_cfg = model_config(recipe)
        self.ckpt = Checkpoints(out, strategy.rank, strategy.sharded, fingerprint(recipe, self.model_cfg))
        self.metrics_path = out / "metrics.jsonl"
        self.metrics_lines, self.metrics_hash = 0, hashlib.sha256()
        if strategy.is_main:  # the lines kept from before a resume
            kept = self.metrics_path.read_bytes()
            self.metrics_lines = kept.count(b"\n")
            self.metrics_hash.update(kept)
        self.progress = Progress(enabled=strategy.is_main and not quiet)
        self.kill_after = int(os.environ.get(KILL_ENV, "0"))
        self.steps_done = 0
        self.elapsed: dict[str, float] = {}
        self.rm_norm = (0.0, 1.0)
        self.heldout_sft: dict | None = None  # the SFT policy's per-prompt held-out results
        self.summary: dict[str, float] = {}

    # -- data ---------------------------------------------------------------------
    def data_name(self, kind: str) -> str:
        return getattr(self.recipe.data, kind) or str(D.default_path(kind))

    def rows(self, kind: str) -> list[dict]:
        return D.load_jsonl(self.data_name(kind), kind)

    def prompts(self, max_new_tokens: int) -> D.PromptData:
        return D.prompt_tensors(self.rows("prompts"), self.tok, self.model_cfg.block_size, max_new_tokens,
                                self.data_name("prompts"))

    def shard(self, ids: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch."""
        n, w, r = len(ids), self.strategy.dp_world, self.strategy.dp_rank
        if n % w:
            raise ValueError(f"{self.recipe.path}: a global batch of {n} does not split over {w} ranks")
        return ids[r * n // w:(r + 1) * n // w]

    def shard_all(self, n: int) -> torch.Tensor:
        return torch.arange(n)[self.strategy.dp_rank::self.strategy.dp_world]

    # -- training pieces ----------------------------------------------------------
    def engine(self, model, lr: float, weight_decay: float):
        opt = FusedAdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
        return self.strategy.prepare(model, opt)

    def generator(self, stage: str) -> Rng:
        """A stage's streams; "eval": held-out evaluations (each starts it afresh)."""
        return Rng(self.recipe.seed * 1000 + (*R.STAGES, "eval").index(stage), self.device)

    def loop(self, stage: str, total: int, objs: dict, step_fn) -> None:
        """Steps start..total of a stage: restore, step, log, checkpoint, maybe stop."""
        start = self._restore(stage, objs)
        t_stage = time.perf_counter() - self.elapsed.get(stage, 0.0)
        with self.progress.task(stage, total, start) as bar:
            for i in range(start, total):
                metrics = step_fn(i)
                self.elapsed[stage] = time.perf_counter() - t_stage
                self.log(stage, i + 1, metrics)
                bar.advance(metrics)
                if (i + 1) % self.recipe.checkpoint_every == 0 and i + 1 < total:
                    self.save(stage, i + 1, {k: o.state_dict() for k, o in objs.items()}, final=False)
                self._maybe_die()
                faults.point(f"step:{stage}")

    def _restore(self, stage: str, objs: dict) -> int:
        entry = self.ckpt.find(stage) if self.resume else None
        if entry is None:
            return 0
        state = self.ckpt.load(entry, map_location=self.device)
        for k, o in objs.items():
            o.load_state_dict(state[k])
        _set_rng(state["rng"])
        self.elapsed[stage] = state["elapsed"]
        return entry.step

    def _maybe_die(self) -> None:
        self.steps_done += 1
        if self.kill_after and self.steps_done >= self.kill_after:
            self.progress.stop()
            os._exit(137)  # like a kill: no cleanup, no flush beyond what is on disk

    def save(self, stage: str, step: int, state: dict, final: bool) -> None:
        state = {**state, "rng": _get_rng(self.device), "elapsed": self.elapsed.get(stage, 0.0)}
        files = {}
        if self.strategy.is_main or self.strategy.sharded:
            name, digest = self.ckpt.write_shard(stage, step, final, state)
            files = {name: digest}
        files = self.strategy.gather_files(files) if self.strategy.sharded else files
        if self.strategy.is_main:
            self.ckpt.commit(stage, step, final, files, self.metrics_lines, self.metrics_hash.hexdigest())
        self.strategy.barrier()

    def finish(self, stage: str, state: dict) -> None:
        total = {"sft": self.recipe.sft.steps, "reward": self.recipe.reward.steps,
                 "ppo": self.recipe.ppo.iterations, "rejection": self.recipe.rejection.rounds}[stage]
        self.save(stage, total, state, final=True)
        return {**state, "elapsed": self.elapsed.get(stage, 0.0)}

    def log(self, stage: str, step: int, metrics: dict) -> None:
        if not self.strategy.is_main:
            return
        record = {"stage": stage, "step": step, **metrics, "elapsed": self.elapsed.get(stage, 0.0)}
        line = (json.dumps(record) + "\n").encode()
        with open(self.metrics_path, "ab") as f:  # appended; a resume cuts the file back to a checkpoint
            f.write(line)
        self.metrics_lines += 1
        self.metrics_hash.update(line)



def _get_rng(device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type != "cpu":
        state["device"] = torch.get_device_module(device.type).get_rng_state()
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "device" in state:
        torch.get_device_module(portkit.device().type).set_rng_state(state["device"].cpu())


# -- the stages in order ------------------------------------------------------------
def new_policy(run: Run) -> GPT:
    model = load_gpt2(run.recipe.init) if run.recipe.init else GPT(run.model_cfg)
    return run.strategy.parallelize(model).to(run.device)


def new_scalar(run: Run, trunk: GPT) -> GPT:
    """A scalar-head model on a copy of `trunk`'s weights (the head is fresh)."""
    model = fresh(run, "scalar")
    missing, unexpected = model.load_state_dict(trunk.state_dict(), strict=False)
    assert not unexpected and all(m.startswith("score.") for m in missing), (missing, unexpected)
    return model


def fresh(run: Run, head: str = "lm") -> GPT:
    """A new model of the run's config (weights loaded by the caller), parallelized and placed."""
    return run.strategy.parallelize(GPT(run.model_cfg, head=head)).to(run.device)


def run_stages(run: Run) -> None:
    """Each stage trains models built for it and ends with their final state; the next
    stage starts from fresh models loaded from that state (frameworks such as ZeRO-3
    leave the trained modules partitioned). PPO and rejection sampling both start from
    the SFT policy: they are alternatives, judged against the same "before"."""
    from portkit.models.rlhf import ppo, rejection, reward, sft
    recipe = run.recipe
    portkit.manual_seed(recipe.seed)
    policy = new_policy(run)
    policy_state, rm_state = policy.state_dict(), None
    run.progress.note(f"model: {policy.num_params() / 1e6:.2f}M parameters, {run.model_cfg}")
    for k, stage in enumerate(recipe.stages):
        portkit.manual_seed(recipe.seed + k + 1)  # new heads start alike with or without --resume
        final = _final_state(run, stage)
        policy = fresh(run)
        policy.load_state_dict(policy_state)
        if stage == "sft":
            final = final or sft.run(run, policy)
            policy_state = final["policy"]
        elif stage == "reward":
            final = final or reward.run(run, new_scalar(run, policy), policy)
            rm_state = final["rm"]
            run.rm_norm = (final["score_mean"], final["score_std"])
            run.heldout_sft = final["heldout_sft"]
            run.summary.update(rm_eval_acc=final["eval_acc"], rm_policy_acc=final["policy_acc"],
                               rm_policy_pairs=final["policy_pairs"])
        else:
            rm, ref = fresh(run, "scalar"), fresh(run)
            rm.load_state_dict(rm_state)
            ref.load_state_dict(policy_state)
            if stage == "ppo":
                critic = new_scalar(run, rm if recipe.ppo.critic_init == "reward" else policy)
                final = final or ppo.run(run, policy, critic, ref, rm)
            else:
                final = final or rejection.run(run, policy, ref, rm)
        run.elapsed[stage] = final["elapsed"]


def _final_state(run: Run, stage: str) -> dict | None:
    entry = run.ckpt.find(stage) if run.resume else None
    if entry is None or not entry.final:
        return None
    run.progress.note(f"[{stage}] complete in the checkpoint; loaded")
    return run.ckpt.load(entry, map_location=run.device)


# -- the command ----------------------------------------------------------------------
def configure(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML, e.g. models/recipes/default.yaml")
    parser.add_argument("--backend", help="backend name (default: the recipe's backend:, else PORTKIT_BACKEND, else auto)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    parser.add_argument("--out", help="run directory (default: runs/RECIPE_NAME)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args) -> int:
    recipe = R.load(args.recipe)
    out = Path(args.out) if args.out else contained("runs", recipe.name, recipe.path, "name")
    backend = select_backend(args.backend, recipe)
    from portkit.ops import registry
    registry.set_mode(recipe.ops)
    strategy = strategies.build(recipe.strategy)
    strategy.setup()
    if strategy.is_main:
        portkit.runtime.plugins().warn("portkit run")
    ckpt = Checkpoints(out, strategy.rank, strategy.sharded, fingerprint(recipe, model_config(recipe)))
    strategy.barrier()
    if strategy.is_main:
        prepare_out(out, args.resume, ckpt, Progress(True).note)  # said even with --quiet
    strategy.barrier()
    run = Run(recipe, out, strategy, args.resume and bool(ckpt.entries()), args.quiet)
    run.progress.note(f"portkit run {recipe.name}: backend {backend.name}, device {run.device}, "
                      f"strategy {strategy.name} x{strategy.world}, ops {recipe.ops}, out {out}")
    t0 = time.perf_counter()
    try:
        run_stages(run)
    except RuntimeError as e:
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise UserError(f"the model or a batch does not fit in memory on {run.device} ({str(e).splitlines()[0]})",
                        file=recipe.path, key="model", fix="lower model.n_layer, model.n_embd, model.block_size "
                        "or the batch sizes") from e
    failed = []
    if strategy.is_main:
        from portkit.models import report
        written = report.write(out, recipe, run, backend, strategy, time.perf_counter() - t0)
        run.progress.note(report.summary_text(written) + f"\nreport: {out / 'report.md'}")
        failed = report.failed_checks(written)
    del run  # its models and engines go before the process group does
    strategy.shutdown()
    return checks_status(recipe, failed)


def select_backend(name: str | None, recipe: R.Recipe):
    """The backend named by --backend, else the recipe, else PORTKIT_BACKEND, else auto; an error
    says which of these named it."""
    try:
        return portkit.select_backend(name or recipe.backend)
    except portkit.BackendError as e:
        e.file, e.key = ((None, "--backend") if name else (recipe.path, "backend") if recipe.backend
                         else (None, portkit.runtime.BACKEND_ENV) if os.environ.get(portkit.runtime.BACKEND_ENV)
                         else (None, None))
        raise


def checks_status(recipe: R.Recipe, failed: list[str]) -> int:
    """1 when a check FAILed and the recipe enforces its checks (the default), else 0."""
    if not failed:
        return 0
    enforced = recipe.enforce_checks
    print(f"portkit run: {len(failed)} check(s) FAIL: {', '.join(failed)}"
          + ("" if enforced else " (the recipe sets enforce_checks: false, so the exit status stays 0)"),
          file=sys.stderr)
    return 1 if enforced else 0


def model_config(recipe: R.Recipe):
    return read_config(Path(recipe.init)) if recipe.init else recipe.model


def fingerprint(recipe: R.Recipe, model_cfg) -> dict:
    """What the checkpoints' shapes depend on: a resume with other values is refused."""
    return {"model": dataclasses.asdict(model_cfg), "strategy": dataclasses.asdict(recipe.strategy)}


if __name__ == "__main__":  # `python -m portkit.models.runner` (e.g. under torchrun -m) is `portkit run`
    from portkit.cli import main as cli_main
    sys.exit(cli_main(["run", *sys.argv[1:]]))
