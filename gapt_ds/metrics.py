"""The one owner of logged metrics: every TensorBoard tag, and the writer of ``metrics.jsonl`` lines and
DeepSpeed monitor events (rank 0 only). The engine logs each optimizer step through it, ``gapt-ds train``
and the recipes their evaluations, and ``gapt-ds report`` reads the same tags back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

# -- tags -------------------------------------------------------------------------------------------
STEP_PREFIX = "gapt/"  # per optimizer step, written by the engine
EVAL_PREFIX = "eval/"  # per evaluation, written by gapt-ds train and the recipes
CE = STEP_PREFIX + "ce"  # CE averaged over the step's micro-batches and all ranks
MBE_MEAN = STEP_PREFIX + "mbe_mean"  # mean over the selected layers of the step's MBE
MBE_LAYER = STEP_PREFIX + "mbe/layer_"  # + block index: one layer's MBE
PHASE = STEP_PREFIX + "phase"  # phase the step trained in: 1 memorize, 2 compress
MBE_WEIGHT = STEP_PREFIX + "mbe_weight"  # Σ of the MBE weights the algorithm applied in the step's loss
MBE_WEIGHT_LAYER = STEP_PREFIX + "mbe_weight/layer_"  # + block index: that layer's applied weight
LR = STEP_PREFIX + "lr"
GRAD_NORM = STEP_PREFIX + "grad_norm"
SKIPPED_STEPS = STEP_PREFIX + "skipped_steps"  # optimizer steps skipped so far, whoever skipped them
ALIGN = STEP_PREFIX + "align/"  # + "all" | "block_<i>": cos(∇CE, ∇MBE)


def custom_scalars_layout() -> dict:
    """TensorBoard's Custom Scalars layout: a "GAPT" view with the run's story on one page (tag regexes)."""
    chart = _multiline
    return {"GAPT": {
        "CE (train, validation)": chart("^gapt/ce$", "^eval/val_ce$"),
        "MBE per layer and mean": chart("^gapt/mbe/layer_\\d+$", "^gapt/mbe_mean$"),
        "phase (1 memorize, 2 compress)": chart("^gapt/phase$"),
        "MBE weight in the loss": chart("^gapt/mbe_weight$"),
        "cos(∇CE, ∇MBE)": chart("^gapt/align/.*"),
        "exact match": chart("^eval/.*exact_match$"),
        "evaluation": chart("^eval/(?!val_ce$)(?!.*exact_match$).*"),
    }}


def _multiline(*tag_patterns: str) -> list:
    return ["Multiline", list(tag_patterns)]


def eval_tag(name: str) -> str:
    """Tag of an evaluation result (``val_ce``, ``ood_exact_match``, ``forgetting``, ...)."""
    return EVAL_PREFIX + name


def step_scalars(stats, layer_ids: list[int], lr: float, skipped_steps: int, grad_norm: Optional[float],
                 extra: dict[str, float]) -> dict[str, float]:
    """Tag -> value for one optimizer step (``stats``: the engine's ``StepStats``, alignment cosines
    included). ``extra`` are the algorithm's own scalars (``gate/stall_memorize``, ...), under ``gapt/``."""
    scalars = {CE: stats.ce, MBE_MEAN: stats.mbe_mean, PHASE: stats.phase, MBE_WEIGHT: sum(stats.mbe_weights),
               LR: lr, SKIPPED_STEPS: skipped_steps}
    scalars.update({f"{MBE_LAYER}{i}": v for i, v in zip(layer_ids, stats.mbe)})
    scalars.update({f"{MBE_WEIGHT_LAYER}{i}": w for i, w in zip(layer_ids, stats.mbe_weights)})
    if grad_norm is not None and math.isfinite(float(grad_norm)):
        scalars[GRAD_NORM] = float(grad_norm)
    scalars.update({STEP_PREFIX + k: v for k, v in extra.items()})
    scalars.update({ALIGN + group: v for group, v in stats.alignment.items()})
    return scalars


class MetricsWriter:
    """Writes on rank 0 only: monitor events (if the monitor is enabled) and ``metrics.jsonl`` lines (if a
    path is given). Every other rank's writer does nothing."""

    def __init__(self, monitor: Any, rank: int, jsonl: Optional[Path] = None) -> None:
        self.monitor = monitor if rank == 0 and monitor is not None and monitor.enabled else None
        self.file = open(jsonl, "a") if rank == 0 and jsonl is not None else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Monitor events ``(tag, value, step)``."""
        if self.monitor is not None:
            self.monitor.write_events([(tag, float(v), step) for tag, v in values.items()])

    def record(self, **record: Any) -> None:
        """One ``metrics.jsonl`` line."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def evaluation(self, results: dict[str, float], step: int) -> None:
        """An evaluation: ``eval/<name>`` events and a ``{"step", "event": "eval", ...}`` line."""
        self.scalars({eval_tag(k): v for k, v in results.items()}, step)
        self.record(step=step, event="eval", **results)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
