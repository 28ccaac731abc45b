"""Evolution simulation: LLM agents with their own LoRA adapters live in a grid world, learn online and evolve.

``from src.workflows.evolution import EvolutionSimulation``

The names are loaded when first used (``src.utils.lazy``): the simulation brings torch and peft (over a second to
import), which ``main.py --help`` or a chat must not pay for because the CLI knows the ``evolve`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from src.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from src.workflows.evolution.config import EvolutionConfig
    from src.workflows.evolution.simulation import EvolutionEvent, EvolutionResult, EvolutionSimulation, GenerationStats

__all__ = ["EvolutionConfig", "EvolutionEvent", "EvolutionResult", "EvolutionSimulation", "GenerationStats"]
__getattr__ = lazy_exports(__name__, {
    "EvolutionConfig": "src.workflows.evolution.config",
    **dict.fromkeys(("EvolutionEvent", "EvolutionResult", "EvolutionSimulation", "GenerationStats"),
                    "src.workflows.evolution.simulation"),
})  # fmt: skip
