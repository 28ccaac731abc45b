"""Evolution simulation: LLM agents with their own LoRA adapters live in a grid world, learn online and evolve.

``from src.workflows.evolution import EvolutionSimulation``
"""

from src.workflows.evolution.config import EvolutionConfig
from src.workflows.evolution.simulation import EvolutionEvent, EvolutionResult, EvolutionSimulation, GenerationStats

__all__ = ["EvolutionConfig", "EvolutionEvent", "EvolutionResult", "EvolutionSimulation", "GenerationStats"]
