"""The validated ``"gapt"`` block of a DeepSpeed JSON config (every key documented in README.md).

DeepSpeed keeps unknown top-level keys but never validates them, so this module owns the block:
a strict schema (unknown keys rejected, with "did you mean" hints), all problems reported at once.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GAPT_KEY = "gapt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def checked(cls, prefix: str, source: str = "", **values: Any):
        """Construct from keyword values; every problem in one ValueError, with key paths under ``prefix``."""
        try:
            return cls(**values)
        except ValidationError as err:
            raise ValueError(format_errors(err, prefix=prefix, source=source, model=cls)) from None


class GateConfig(_Strict):
    """Settings of the GAPT phase gate (spec §4), the argument of ``PhaseGate``."""

    patience_memorize: int = Field(125, ge=1, description="p_m: steps without CE gain before compressing")
    patience_compress: int = Field(75, ge=1, description="p_c: steps without MBE gain before memorizing")
    ce_delta: float = Field(0.01, ge=0, allow_inf_nan=False, description="δ: CE gain that counts")
    mbe_delta: float = Field(0.002, ge=0, allow_inf_nan=False, description="δ_c: MBE gain that counts")
    spike_tolerance: float = Field(0.1, ge=0, allow_inf_nan=False, description="τ: CE > min·(1+τ) ends compression")
    improvement: Literal["absolute", "relative"] = "absolute"
    mbe_any_layer: bool = Field(True, description="per-layer minima; any layer improving counts")
    reset_ce_min: bool = Field(False, description="also reset the CE minimum on entering compression")


class GaptConfig(_Strict):
    """The ``"gapt"`` block. ``GaptConfig()`` is the documented default used when the block is absent.

    The schema is structural: the ``algorithm`` name is checked against the registered algorithms and
    plugins where the algorithm is built (``gapt_ds.algorithms.algorithm_class``), before DeepSpeed starts."""

    algorithm: str = Field("gapt", description="training algorithm: ce | mbe | gapt (or a plugin's name)")
    mbe_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="w in CE + w·MBE")
    patch_size: int = Field(8, ge=2, description="window length P of patch MBE")
    patch_tail: Literal["error", "drop"] = "error"
    layers: Union[Literal["inner", "all"], list[int]] = Field("inner", union_mode="left_to_right")
    mbe_mode: Literal["patch", "global"] = "patch"
    phase: Literal["adaptive", "memorize", "compress"] = "adaptive"
    gate: GateConfig = GateConfig()
    alignment_every: int = Field(0, ge=0, description="gradient-alignment period in optimizer steps; 0 = off")

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_list(cls, layers: Any) -> Any:
        if isinstance(layers, str) and layers not in ("inner", "all"):
            raise ValueError(f"must be 'inner', 'all' or a list of block indices, got {layers!r}")
        if isinstance(layers, list):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"layer indices must be integers, got {layers}")
            if not layers:
                raise ValueError("layer list is empty; use 'inner', 'all' or a non-empty list of block indices")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layer list has duplicates: {layers}")
        return layers

    @classmethod
    def from_ds_config(cls, ds_config: Union[dict, str, Path, None], source: str = "") -> "GaptConfig":
        """Validate the ``"gapt"`` block of a DeepSpeed config (dict or JSON path); default if absent."""
        if ds_config is None:
            return cls()
        if isinstance(ds_config, (str, Path)):
            source = source or str(ds_config)
            ds_config = load_json(ds_config)
        if not isinstance(ds_config, dict):
            raise ValueError(f"DeepSpeed config must be a JSON object, got {type(ds_config).__name__}")
        block = ds_config.get(GAPT_KEY, {})
        if not isinstance(block, dict):
            raise ValueError(f'"{GAPT_KEY}" must be a JSON object, got {type(block).__name__}')
        return cls.checked(GAPT_KEY, source=source, **block)

    def to_ds_block(self) -> dict:
        """The block as JSON-ready dict (for writing back into a DeepSpeed config)."""
        return self.model_dump()


def load_json(path: Union[str, Path]) -> dict:
    """Read a JSON file with an error that names the file and the line of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model that owns the location ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def format_errors(err: ValidationError, prefix: str, source: str = "", model: type[BaseModel] = GaptConfig) -> str:
    """One line per problem, each with its full key path, plus a "did you mean" for misspelt keys."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        path = ".".join((prefix, *loc))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(loc[-1], _known_keys(model, loc), n=1, cutoff=0.6)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    where = f" in {source}" if source else ""
    head = f"invalid \"{prefix}\" config{where} ({len(lines)} problem{'s' * (len(lines) != 1)}):"
    return "\n".join([head, *dict.fromkeys(lines)])
