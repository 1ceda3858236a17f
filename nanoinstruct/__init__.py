"""nanoinstruct: the InstructGPT recipe (Ouyang et al. 2022) from scratch. See README.md."""

from nanoinstruct.losses import ppo_policy_loss, ppo_value_loss, ranking_loss  # noqa: F401
