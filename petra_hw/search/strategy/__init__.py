"""Search strategies as plug-ins: one module per strategy, registered by name.

``base`` holds the ask/tell interface, canonical identity and the registry (``register_strategy``,
``get_strategy``); ``stopping`` the rules that end a run; ``evolution`` (PETRA's search),
``random_search`` and ``nsga2`` (the comparison runs) register themselves when imported here.
"""

from __future__ import annotations

from petra_hw.search.strategy import evolution, nsga2, random_search
from petra_hw.search.strategy.base import (
    STRATEGIES,
    Strategy,
    canonical_key,
    get_strategy,
    register_strategy,
)
from petra_hw.search.strategy.evolution import EvolutionStrategy
from petra_hw.search.strategy.nsga2 import NSGA2Strategy, PipelineCodec
from petra_hw.search.strategy.random_search import RandomStrategy
from petra_hw.search.strategy.stopping import Stopper, Target

__all__ = [
    "STRATEGIES",
    "EvolutionStrategy",
    "NSGA2Strategy",
    "PipelineCodec",
    "RandomStrategy",
    "Stopper",
    "Strategy",
    "Target",
    "canonical_key",
    "evolution",
    "get_strategy",
    "nsga2",
    "random_search",
    "register_strategy",
]
