"""The RLHF stages of a recipe: SFT, reward model, PPO and rejection sampling."""
