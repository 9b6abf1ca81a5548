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
    """Settings of the GAPT phase gate (docs/algorithm.md, "The gate"), the argument of ``PhaseGate``.
    The field descriptions are the documentation: README.md's table is checked against them."""

    patience_memorize: int = Field(
        125, ge=1, description="p_m: steps without CE gain > `ce_delta` before compressing")
    patience_compress: int = Field(
        75, ge=1, description="p_c: steps without MBE gain > `mbe_delta` before memorizing again")
    ce_delta: float = Field(0.01, ge=0, allow_inf_nan=False, description="δ: CE gain that counts (nats if absolute)")
    mbe_delta: float = Field(0.002, ge=0, allow_inf_nan=False, description="δ_c: MBE gain that counts")
    spike_tolerance: float = Field(
        0.1, ge=0, allow_inf_nan=False, description="τ: CE > min CE · (1+τ) ends compression at once")
    improvement: Literal["absolute", "relative"] = Field(
        "absolute", description="`absolute` (min − current) or `relative` ((min − current)/|min|) gains")
    mbe_any_layer: bool = Field(
        True, description="per-layer MBE minima, and a gain in any layer counts; `false`: the layer mean")
    reset_ce_min: bool = Field(
        False, description="also forget the CE minimum on entering compression (the reference code's variant)")


class GaptConfig(_Strict):
    """The ``"gapt"`` block. ``GaptConfig()`` is the documented default used when the block is absent.
    The field descriptions are the documentation: README.md's table is checked against them.

    The schema is structural: the ``algorithm`` name is checked against the registered algorithms and
    plugins where the algorithm is built (``gapt_ds.algorithms.algorithm_class``), before DeepSpeed starts."""

    algorithm: str = Field("gapt", description=(
        "`gapt` (gated phases), `gapt_round_robin` (gated, but compression adds w·MBE of one selected layer, "
        "the next at every step), `ce` (CE-only baseline, MBE still logged), `mbe` (always CE + w·MBE), "
        "or a plugin (below)"))
    mbe_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description=(
        "w in CE + w·MBE (w is split evenly over the selected layers: the loss uses their mean)"))
    patch_size: int = Field(8, ge=2, description=(
        "MBE window P: consecutive tokens of one sequence; windows never cross sequences or ranks"))
    patch_tail: Literal["error", "drop"] = Field("error", description=(
        "sequence length not divisible by P: `error`, or `drop` the last S mod P tokens"))
    layers: Union[Literal["inner", "all"], list[int]] = Field("inner", union_mode="left_to_right", description=(
        "blocks whose output MBE is measured: `inner` (all but first and last), `all`, or a list of indices "
        "(negative from the end)"))
    mbe_mode: Literal["patch", "global"] = Field("patch", description=(
        "`patch`: mean α=2 MBE of windows. `global`: α=2 MBE of all tokens of the global micro-batch "
        "(D×D Gram all-reduced over ranks, exact gradient)"))
    phase: Literal["adaptive", "memorize", "compress"] = Field("adaptive", description=(
        "`adaptive` (the gate decides), or pin `memorize` / `compress` for experiments"))
    gate: GateConfig = Field(GateConfig(), description="the gate's settings (the `gate.*` keys)")
    alignment_every: int = Field(0, ge=0, description=(
        "gradient-alignment monitor period k in optimizer steps (0: off); see \"Memorization-compression cycle "
        "monitor\""))

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
