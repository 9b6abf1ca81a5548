"""Check the DeepSpeed-owned part of a config before DeepSpeed starts: every problem at once, one line each.

DeepSpeed ignores unknown top-level keys (a typo such as ``gradient_acumulation_steps`` silently falls
back to the default) and reports bad values as tracebacks from deep inside ``initialize`` (an optimizer
or scheduler parameter typo only when the object is built). Here:

- unknown top-level keys, with a "did you mean" drawn from the keys DeepSpeed itself reads: those its
  own ``DeepSpeedConfig`` looks up (recorded while it parses a config) and the names in its constants;
- Hugging Face-style ``"auto"`` values (a Trainer placeholder that DeepSpeed alone never fills in);
- the batch-size keys (positive integers, consistent with the world size);
- optimizer and scheduler ``params`` against the signature of the class DeepSpeed would build;
- everything else by DeepSpeed's own parser (its pydantic sections reject typos in nested keys).
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import os
from collections.abc import KeysView
from typing import Any, Optional

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
OWN_KEYS = {"gapt"}  # top-level keys gapt-ds adds (validated by gapt_ds.config)


def check_ds_config(cfg: dict, source: str = "", world_size: Optional[int] = None) -> None:
    """Raise one ``ValueError`` listing every problem of the DeepSpeed JSON ``cfg``."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    problems = _unknown_keys(cfg) + _auto_values(cfg) + _batch_problems(cfg, world_size)
    problems += _params_problems(cfg, "optimizer", _optimizer_signature)
    problems += _params_problems(cfg, "scheduler", _scheduler_signature)
    if not problems:  # DeepSpeed stops at its first complaint: only ask it once the rest is clean
        problems = _deepspeed_parse(cfg)
    if problems:
        where = f" in {source}" if source else ""
        raise ValueError(f"invalid DeepSpeed config{where} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  "
                         + "\n  ".join(problems))


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- top-level keys ---------------------------------------------------------------------------------
class _Recorder(dict):
    """A dict that records every key looked up in it (DeepSpeed's parser copies it: the set is shared)."""

    seen: set = set()

    def __getitem__(self, k):
        self.seen.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.seen.add(k)
        return super().get(k, default)

    def __contains__(self, k):
        self.seen.add(k)
        return super().__contains__(k)

    def keys(self):
        return KeysView(self)  # its `in` goes through __contains__


@functools.lru_cache(maxsize=1)
def deepspeed_top_level_keys() -> frozenset[str]:
    """The top-level keys DeepSpeed knows: looked up by its config parser, or named in its constants."""
    import deepspeed.runtime.constants as constants
    from deepspeed.runtime.config import DeepSpeedConfig

    _Recorder.seen = set()
    probe = {"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "adamw", "params": {}},
             "scheduler": {"type": "WarmupLR", "params": {}}}
    DeepSpeedConfig(_Recorder(probe))
    names = {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str) and v.isidentifier()}
    return frozenset(_Recorder.seen | names)


def _unknown_keys(cfg: dict) -> list[str]:
    known = deepspeed_top_level_keys() | OWN_KEYS
    return [f"{key}: unknown top-level key, DeepSpeed would ignore it{_did_you_mean(key, known)}"
            for key in cfg if key not in known]


# -- values -----------------------------------------------------------------------------------------
def _auto_values(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _auto_values(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _auto_values(v, f"{path}[{i}]")]
    if node == "auto":
        return [f'{path}: "auto" is a Hugging Face Trainer placeholder (the Trainer fills it in from its own '
                "arguments); DeepSpeed and gapt-ds do not: write the value itself (a number, or true/false), or "
                "remove the key for DeepSpeed's default"]
    return []


def _batch_problems(cfg: dict, world_size: int) -> list[str]:
    problems = []
    for key in BATCH_KEYS:
        value = cfg.get(key)
        if key not in cfg or value == "auto":
            continue
        if isinstance(value, str) and value.strip().isdigit():
            problems.append(f"{key}: must be an integer, got the string {value!r}: "
                            f"write {value.strip()} without quotes")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{key}: must be an integer >= 1, got {value!r}")
    if not problems and all(k in cfg for k in BATCH_KEYS):
        tbs, micro, gas = (cfg[k] for k in BATCH_KEYS)
        if tbs != micro * gas * world_size:
            problems.append(f"train_batch_size {tbs} != train_micro_batch_size_per_gpu {micro} x "
                            f"gradient_accumulation_steps {gas} x {world_size} ranks; drop train_batch_size")
    return problems


# -- optimizer and scheduler parameters ------------------------------------------------------------
def _accepted(*classes: type) -> Optional[set[str]]:
    """Keyword parameters the classes' constructors take together (None: one takes **kwargs)."""
    names: set[str] = set()
    for cls in classes:
        params = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self", "params", "model_params", "optimizer"}


def _optimizer_signature(name: str) -> Optional[tuple[str, Optional[set[str]]]]:
    """(what builds it, its accepted params) for DeepSpeed's own names and torch.optim classes."""
    import torch

    lower = name.lower()
    if lower in ("adam", "adamw"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

        accepted = _accepted(torch.optim.Adam, torch.optim.AdamW, FusedAdam, DeepSpeedCPUAdam)
        return f"DeepSpeed's {lower}", accepted and accepted | {"torch_adam", "adam_w_mode", "fp32_optimizer_states"}
    if lower in ("lamb", "lion", "adagrad"):
        import importlib

        mod = importlib.import_module(f"deepspeed.ops.{lower}")
        classes = [getattr(mod, n) for n in dir(mod) if n.lower().endswith(lower) and isinstance(getattr(mod, n), type)]
        if lower == "adagrad":
            classes.append(torch.optim.Adagrad)
        return f"DeepSpeed's {lower}", _accepted(*classes)
    from gapt_ds.optim import deepspeed_optimizers, torch_optimizers

    if lower in deepspeed_optimizers():  # muon, mu* (mup): built from groups, not one signature
        return None
    cls = next((c for n, c in torch_optimizers().items() if n.lower() == lower), None)
    return (f"torch.optim.{cls.__name__}", _accepted(cls)) if cls is not None else None


def _scheduler_signature(name: str) -> Optional[tuple[str, Optional[set[str]]]]:
    from deepspeed.runtime import lr_schedules

    if name not in lr_schedules.VALID_LR_SCHEDULES:
        raise ValueError(f"unknown type {name!r}{_did_you_mean(name, lr_schedules.VALID_LR_SCHEDULES)}; DeepSpeed's "
                         f"schedulers: {', '.join(lr_schedules.VALID_LR_SCHEDULES)}")
    return f"DeepSpeed's {name}", _accepted(getattr(lr_schedules, name))


def _params_problems(cfg: dict, section: str, signature) -> list[str]:
    block = cfg.get(section)
    if block is None:
        return []
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return [f'{section}: must be an object with a string "type"']
    params = block.get("params", {})
    if not isinstance(params, dict):
        return [f"{section}.params: must be an object, got {type(params).__name__}"]
    try:
        found = signature(block["type"])
    except ValueError as err:
        return [f"{section}.type: {err}"]
    if found is None or found[1] is None:
        return []
    owner, accepted = found
    return [f"{section}.params.{k}: {owner} takes no such parameter{_did_you_mean(k, accepted)}"
            for k in params if k not in accepted]


def _deepspeed_parse(cfg: dict) -> list[str]:
    """DeepSpeed's own parser on the config (batch keys normalised: the world size is not known yet)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    probe = {k: v for k, v in copy.deepcopy(cfg).items() if k not in BATCH_KEYS and k not in OWN_KEYS}
    probe.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    try:
        DeepSpeedConfig(probe)
    except Exception as err:  # DeepSpeed's assertions, pydantic errors, ValueErrors
        lines = [line.strip() for line in str(err).strip().splitlines()
                 if line.strip() and not line.strip().startswith("For further information")]
        detail = "; ".join(lines[:4])[:400] or type(err).__name__
        return [f"DeepSpeed rejects it: {detail}"]
    return []
