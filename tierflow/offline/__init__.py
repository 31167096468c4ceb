"""tierflow's offline model: deterministic, extractive, labelled; for demos and tests, never a provider stand-in."""

from tierflow.offline.provider import OfflineProvider, prompt_data
from tierflow.offline.skills import SKILLS, register_skill

__all__ = ["SKILLS", "OfflineProvider", "prompt_data", "register_skill"]
