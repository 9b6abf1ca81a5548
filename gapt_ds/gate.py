"""The GAPT phase gate (docs/algorithm.md §4): a pure-Python state machine fed once per optimizer step.

Phase 1 = memorize (loss = CE), phase 2 = compress (loss = CE + w·MBE). In a distributed run the
caller feeds statistics already all-reduced over ranks, so every rank takes the same decision.

    gate = PhaseGate(GateConfig(patience_memorize=125, patience_compress=75))
    phase = gate.update(ce, mbe)        # mbe: float or per-layer sequence
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

from gapt_ds.config import GateConfig

MEMORIZE, COMPRESS = 1, 2
INF = math.inf

MbeValue = Union[float, Sequence[float]]


class PhaseGate:
    """Switches memorize -> compress on a CE plateau and compress -> memorize on a CE spike or an
    MBE plateau. ``cfg`` is the config's ``gate`` block (default: the paper's settings)."""

    def __init__(self, cfg: Optional[GateConfig] = None) -> None:
        self.cfg = GateConfig() if cfg is None else cfg
        self.phase = MEMORIZE
        self.ce_min = INF
        self.mbe_min: list[float] = []  # per layer (mbe_any_layer) or one aggregate entry; [] = reset (∞)
        self.stall_memorize = 0  # s_m
        self.stall_compress = 0  # s_c
        self.steps = 0
        self.switches = 0

    def _gain(self, current: float, best: float) -> float:
        if best == INF:
            return INF
        if self.cfg.improvement == "absolute":
            return best - current
        return (best - current) / abs(best) if best != 0 else (INF if current < best else 0.0)

    def _mbe_values(self, mbe: MbeValue) -> list[float]:
        values = [float(mbe)] if isinstance(mbe, (int, float)) else [float(v) for v in mbe]
        if not values:
            raise ValueError("mbe is an empty sequence; pass a float or one value per layer")
        if not self.cfg.mbe_any_layer:
            values = [sum(values) / len(values)]
        if self.mbe_min and len(self.mbe_min) != len(values):
            raise ValueError(f"got {len(values)} MBE values, but the gate tracks {len(self.mbe_min)} layers")
        return values

    def _switch(self, phase: int) -> None:
        self.phase = phase
        self.switches += 1
        if phase == COMPRESS:
            self.stall_compress = 0
            self.mbe_min = []
            if self.cfg.reset_ce_min:
                self.ce_min = INF
        else:
            self.stall_memorize = 0

    def update(self, ce: float, mbe: MbeValue) -> int:
        """Advance one optimizer step with that step's CE and MBE; return the phase for the next step."""
        ce = float(ce)
        values = self._mbe_values(mbe)
        if not all(math.isfinite(v) for v in (ce, *values)):
            raise ValueError(f"non-finite gate input: ce={ce}, mbe={values} (the engine skips such steps)")
        self.steps += 1
        gain_ce = self._gain(ce, self.ce_min)
        self.ce_min = min(self.ce_min, ce)
        if self.phase == MEMORIZE:
            self.stall_memorize = 0 if gain_ce > self.cfg.ce_delta else self.stall_memorize + 1
            if self.stall_memorize >= self.cfg.patience_memorize:
                self._switch(COMPRESS)
        elif ce > self.ce_min * (1.0 + self.cfg.spike_tolerance):
            self._switch(MEMORIZE)
        else:
            best = self.mbe_min or [INF] * len(values)
            improved = any(self._gain(v, m) > self.cfg.mbe_delta for v, m in zip(values, best))
            self.stall_compress = 0 if improved else self.stall_compress + 1
            self.mbe_min = [min(v, m) for v, m in zip(values, best)]
            if self.stall_compress >= self.cfg.patience_compress:
                self._switch(MEMORIZE)
        return self.phase

    def state_dict(self) -> dict:
        """Everything needed to continue identically (settings included, to detect mismatches)."""
        return {
            "phase": self.phase,
            "ce_min": self.ce_min,
            "mbe_min": list(self.mbe_min),
            "stall_memorize": self.stall_memorize,
            "stall_compress": self.stall_compress,
            "steps": self.steps,
            "switches": self.switches,
            "settings": self.cfg.model_dump(),
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"phase", "ce_min", "mbe_min", "stall_memorize", "stall_compress", "steps"} - set(state)
        if missing:
            raise ValueError(f"gate state is missing {sorted(missing)}: not a PhaseGate.state_dict()")
        if state["phase"] not in (MEMORIZE, COMPRESS):
            raise ValueError(f"gate state has invalid phase {state['phase']!r}")
        self.phase = int(state["phase"])
        self.ce_min = float(state["ce_min"])
        self.mbe_min = [float(v) for v in state["mbe_min"]]
        self.stall_memorize = int(state["stall_memorize"])
        self.stall_compress = int(state["stall_compress"])
        self.steps = int(state["steps"])
        self.switches = int(state.get("switches", 0))

    def __repr__(self) -> str:
        name = "memorize" if self.phase == MEMORIZE else "compress"
        return f"PhaseGate(phase={name}, steps={self.steps}, s_m={self.stall_memorize}, s_c={self.stall_compress})"
