"""The recipe schema: YAML data only, validated into these dataclasses by portkit.config.build,
so an unknown key, a bad type or a bad value is an error naming the file and the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from portkit.config import ConfigError, build, load_yaml
from portkit.models.gpt import GPTConfig

STAGES = ("sft", "reward", "ppo", "rejection")


@dataclass(kw_only=True, slots=True)
class DataPaths:  # None: the embedded default; relative paths are relative to the recipe file
    sft: str | None = None
    reward: str | None = None
    reward_eval: str | None = None
    prompts: str | None = None


@dataclass(kw_only=True, slots=True)
class Strategy:
    name: Literal["single", "ddp", "deepspeed", "colossalai", "megatron"] = "single"
    zero_stage: int = 1                                 # deepspeed: 1, 2 or 3
    plugin: Literal["ddp", "zero2"] = "ddp"             # colossalai: TorchDDPPlugin or LowLevelZeroPlugin
    tp: int = 1                                         # megatron: tensor-parallel size

    def __post_init__(self):
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.tp < 1:
            raise ValueError(f"tp must be >= 1, got {self.tp}")


MAX_COUNT = 10_000_000  # steps, iterations, batch sizes, samples: more is a typo, not a plan


def _positive(obj, *keys):
    for key in keys:
        value = getattr(obj, key)
        if value <= 0:
            raise ValueError(f"{key} must be > 0, got {value}")
        if isinstance(value, int) and value > MAX_COUNT:
            raise ValueError(f"{key} must be at most {MAX_COUNT:,}, got {value:,}")


def _not_negative(obj, *keys):
    for key in keys:
        if getattr(obj, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(obj, key)}")


@dataclass(kw_only=True, slots=True)
class SFT:
    steps: int = 300
    batch_size: int = 32      # global, split over ranks
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0

    def __post_init__(self):
        _positive(self, "steps", "batch_size", "lr")
        _not_negative(self, "warmup", "weight_decay")


@dataclass(kw_only=True, slots=True)
class Reward:
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50      # held-out accuracy every N steps and at the end
    policy_prompts: int = 0   # prompts of data.reward whose SFT samples, labelled by the rule, add pairs
    policy_samples: int = 4   # samples per prompt; a prompt gives pairs when some are right, some wrong
    policy_share: float = 0.5  # of each batch, drawn from those pairs (the file's pairs are many and easy)

    def __post_init__(self):
        _positive(self, "steps", "batch_size", "lr", "eval_every", "policy_samples")
        if self.policy_prompts < 0:
            raise ValueError(f"policy_prompts must be >= 0, got {self.policy_prompts}")
        if not 0.0 <= self.policy_share < 1.0:
            raise ValueError(f"policy_share must be in [0, 1), got {self.policy_share}")
        _not_negative(self, "warmup", "weight_decay")


@dataclass(kw_only=True, slots=True)
class PPO:
    iterations: int = 30          # rollout + update rounds; a checkpoint step is one iteration
    rollout_batch: int = 32       # prompts per iteration (global)
    minibatch: int = 16
    ppo_epochs: int = 2
    max_new_tokens: int = 10
    temperature: float = 1.0
    top_k: int = 0                # 0: no top-k filter
    actor_lr: float = 1e-4        # peak; linear warmup over actor_warmup iterations, then cosine to a tenth
    actor_warmup: int = 5
    critic_lr: float = 5e-4       # constant: the critic has its own Adam, so no value_coef (Adam ignores a scale)
    kl_coef: float = 0.05         # initial coefficient of the per-token KL penalty
    kl_target: float | None = None  # adaptive controller (Ziegler et al.) when set
    kl_horizon: int = 100
    kl_estimator: Literal["k1", "k3"] = "k1"  # k1: log p - log q; k3: (r - 1) - log r, r = q / p
    gamma: float = 1.0
    lam: float = 0.95             # TRL's and OpenRLHF's default
    clip: float = 0.2
    value_clip: float = 0.2
    critic_init: Literal["reward", "sft"] = "reward"  # the critic's trunk; its head starts at 0 (ppo.zero_value_head)
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response cut at max_new_tokens (TRL's)

    def __post_init__(self):
        _positive(self, "iterations", "rollout_batch", "minibatch", "ppo_epochs", "max_new_tokens",
                  "actor_lr", "critic_lr", "clip", "value_clip")
        if self.actor_warmup < 0 or self.missing_eos_penalty < 0:
            raise ValueError(f"actor_warmup and missing_eos_penalty must be >= 0, got {self.actor_warmup}, "
                             f"{self.missing_eos_penalty}")
        if self.rollout_batch % self.minibatch:
            raise ValueError(f"rollout_batch ({self.rollout_batch}) must be a multiple of minibatch ({self.minibatch})")
        _positive(self, "temperature", "kl_horizon")
        _not_negative(self, "kl_coef", "top_k")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")


@dataclass(kw_only=True, slots=True)
class Rejection:
    rounds: int = 3
    prompts_per_round: int = 64
    n_samples: int = 4            # best-of-N
    max_new_tokens: int = 10
    temperature: float = 1.0
    top_k: int = 0
    steps_per_round: int = 30     # SFT steps on the winners
    batch_size: int = 32
    lr: float = 2e-4

    def __post_init__(self):
        _positive(self, "rounds", "prompts_per_round", "n_samples", "max_new_tokens", "steps_per_round",
                  "batch_size", "lr", "temperature")
        _not_negative(self, "top_k")


@dataclass(kw_only=True, slots=True)
class Heldout:  # the evaluation of every policy on the held-out prompts (portkit.models.rlhf.evaluate)
    max_new_tokens: int = 12
    batch: int = 256

    def __post_init__(self):
        _positive(self, "max_new_tokens", "batch")


@dataclass(kw_only=True, slots=True)
class Recipe:
    name: str
    seed: int = 1234
    backend: str | None = None                 # None: --backend, else PORTKIT_BACKEND, else auto
    ops: Literal["auto", "reference"] = "auto"
    init: str | None = None                    # local Hugging Face GPT-2 checkpoint directory
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataPaths = field(default_factory=DataPaths)
    strategy: Strategy = field(default_factory=Strategy)
    stages: list[str] = field(default_factory=lambda: ["sft", "reward", "ppo"])
    checkpoint_every: int = 50
    log_every: int = 1
    sft: SFT = field(default_factory=SFT)
    reward: Reward = field(default_factory=Reward)
    ppo: PPO = field(default_factory=PPO)
    rejection: Rejection = field(default_factory=Rejection)
    heldout: Heldout = field(default_factory=Heldout)
    enforce_checks: bool = True                # a FAIL in the report's checks makes `portkit run` exit 1
    path: str = ""                             # set by load(): the recipe file

    def __post_init__(self):
        if not self.stages:
            raise ValueError(f"stages: empty; list at least one of {', '.join(STAGES)} (in that order)")
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"stages: unknown stage {bad[0]!r}; choose from {', '.join(STAGES)}")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages: {self.stages} must be in the order sft, reward, ppo, rejection, each once")
        if ("ppo" in self.stages or "rejection" in self.stages) and "reward" not in self.stages:
            raise ValueError("stages: ppo and rejection need the reward stage before them")
        _positive(self, "checkpoint_every", "log_every")


def load(path: str | Path) -> Recipe:
    path = Path(path)
    data = load_yaml(path)
    if "path" in data:
        raise ConfigError(f"{path}: unknown key 'path' (it is set from the file name)")
    recipe = build(Recipe, data, f"{path}: recipe")
    recipe.path = str(path.resolve())
    for key in ("sft", "reward", "reward_eval", "prompts"):
        value = getattr(recipe.data, key)
        if value is not None:
            full = (path.parent / value).resolve()
            if not full.is_file():
                raise ConfigError(f"{path}: data.{key}: no such file {value!r} (looked at {full})")
            setattr(recipe.data, key, str(full))
    if recipe.init is not None:
        full = (path.parent / recipe.init).resolve()
        if not full.is_dir():
            raise ConfigError(f"{path}: init: no such checkpoint directory {recipe.init!r} (looked at {full})")
        recipe.init = str(full)
    return recipe
