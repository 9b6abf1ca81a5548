"""Training algorithms: what loss a micro-batch back-propagates and how state updates per step.

The engine never branches on an algorithm's name. Per micro-batch it asks ``layer_weights`` which
layers' MBE enter the loss (MBE of the others is measured without a graph, for logging only) and
calls ``loss``; once per optimizer step it calls ``on_step`` with statistics already averaged over
the step's micro-batches and all-reduced over ranks. Third-party algorithms register a subclass under
the entry-point group ``gapt_ds.algorithms`` and are selected by name in the ``"gapt"`` block.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable

import torch

from gapt_ds.config import GAPT_KEY, GaptConfig
from gapt_ds.gate import COMPRESS, MEMORIZE, PhaseGate

ENTRY_POINT_GROUP = "gapt_ds.algorithms"
_REGISTRY: dict[str, type["Algorithm"]] = {}


class Algorithm:
    """Base class. ``phase`` is 1 (memorize) or 2 (compress); subclasses set ``name``."""

    name = ""

    def __init__(self, cfg: GaptConfig) -> None:
        self.cfg = cfg
        self.phase = MEMORIZE

    def layer_weights(self, num_layers: int) -> list[float]:
        """Weight of each selected layer's MBE in this micro-batch's loss (all zero: CE only)."""
        w = self.cfg.mbe_weight / num_layers if self.phase == COMPRESS else 0.0
        return [w] * num_layers

    def loss(self, ce: torch.Tensor, mbe: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        """Loss to back-propagate: CE + Σ_l weight_l · MBE_l."""
        terms = [w * m for w, m in zip(weights, mbe) if w]
        return ce + torch.stack(terms).sum() if terms else ce

    def on_step(self, ce: float, mbe: list[float]) -> dict[str, float]:
        """Update state after an optimizer step; return extra scalars to log."""
        return {}

    def state_dict(self) -> dict:
        return {"phase": self.phase}

    def load_state_dict(self, state: dict) -> None:
        self.phase = int(state.get("phase", self.phase))


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make an ``Algorithm`` subclass selectable as ``"gapt": {"algorithm": name}``."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        assert issubclass(cls, Algorithm), cls
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


@register_algorithm("ce")
class CrossEntropyOnly(Algorithm):
    """Baseline: always memorize (MBE is still measured and logged)."""


@register_algorithm("mbe")
class FixedWeightMBE(Algorithm):
    """Always compress: CE + w·mean MBE on every step."""

    def __init__(self, cfg: GaptConfig) -> None:
        super().__init__(cfg)
        self.phase = COMPRESS

    def load_state_dict(self, state: dict) -> None:
        pass


@register_algorithm("gapt")
class GatedPhaseTransition(Algorithm):
    """GAPT: the ``PhaseGate`` picks the phase each step; ``"phase"`` other than adaptive pins it."""

    def __init__(self, cfg: GaptConfig) -> None:
        super().__init__(cfg)
        self.gate = PhaseGate(cfg.gate)
        self.pinned = {"memorize": MEMORIZE, "compress": COMPRESS}.get(cfg.phase)
        self.phase = self.pinned or self.gate.phase

    def on_step(self, ce: float, mbe: list[float]) -> dict[str, float]:
        gate_phase = self.gate.update(ce, mbe)
        self.phase = self.pinned or gate_phase
        return {"gate/stall_memorize": self.gate.stall_memorize, "gate/stall_compress": self.gate.stall_compress}

    def state_dict(self) -> dict:
        return {"phase": self.phase, "gate": self.gate.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "gate" not in state:
            raise ValueError("checkpoint has no GAPT gate state (was it saved with another algorithm?)")
        self.gate.load_state_dict(state["gate"])
        self.phase = self.pinned or self.gate.phase


@register_algorithm("gapt_round_robin")
class RoundRobinGAPT(GatedPhaseTransition):
    """GAPT whose compression loss is CE + w·MBE of a single selected layer, the next one at every
    optimizer step (the reference code's round-robin variant, docs/algorithm.md §4). The gate still sees every layer."""

    def __init__(self, cfg: GaptConfig) -> None:
        super().__init__(cfg)
        self.turn = 0

    def layer_weights(self, num_layers: int) -> list[float]:
        weights = [0.0] * num_layers
        if self.phase == COMPRESS:
            weights[self.turn % num_layers] = self.cfg.mbe_weight
        return weights

    def on_step(self, ce: float, mbe: list[float]) -> dict[str, float]:
        logs = super().on_step(ce, mbe)
        self.turn += 1
        return logs

    def state_dict(self) -> dict:
        return {**super().state_dict(), "turn": self.turn}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.turn = int(state.get("turn", 0))


def _plugins() -> dict:
    """Installed entry points, read afresh each time (an uninstalled plugin disappears)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _REGISTRY}


def available_algorithms() -> list[str]:
    """Names selectable in ``"algorithm"``: the registered classes and the installed plugins."""
    return sorted({*_REGISTRY, *_plugins()})


def algorithm_class(name: str) -> type[Algorithm]:
    """The class selected by ``"algorithm": name`` (a plugin is loaded); a ValueError naming the key and
    every available name for an unknown one. Callers check it before DeepSpeed starts."""
    cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    plugins = _plugins()
    if name not in plugins:
        raise ValueError(f"invalid \"{GAPT_KEY}\" config (1 problem):\n  {GAPT_KEY}.algorithm: unknown algorithm "
                         f"{name!r}; available: {', '.join(available_algorithms())}")
    ep = plugins[name]
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ValueError(f"entry point {ep.name!r} ({ep.value}) is not a gapt_ds.algorithms.Algorithm subclass")
    cls.name = ep.name
    return cls


def build_algorithm(cfg: GaptConfig) -> Algorithm:
    """Instantiate the algorithm named in the config (``algorithm_class`` checks the name)."""
    return algorithm_class(cfg.algorithm)(cfg)
