"""Optimizers by name from the DeepSpeed config's ``"optimizer"`` block, with GPT-2 parameter groups.

    optimizer, params, engine_config = build_optimizer(model, ds_config)
    with muon_grouping(model, engine_config):
        engine, *_ = gapt_ds.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                        config=engine_config)

``"type"`` is matched case-insensitively, first hit wins:

1. DeepSpeed's own names (``deepspeed.runtime.config.DEEPSPEED_OPTIMIZERS``: adam, adamw, lamb, lion,
   muon, adagrad, ...). DeepSpeed builds the optimizer from the block as usual; it only gets our
   parameter groups as ``model_parameters``.
2. A ``torch.optim`` class (``"SGD"``, ``"RAdam"``, ``"Adafactor"``, ...).
3. A class (or factory ``f(param_groups, **params)``) registered under the entry-point group
   ``gapt_ds.optimizers``.

For 2 and 3 the optimizer is built here with the parameter groups and the block's ``params`` (unknown
keys are an error naming them), the block is removed from the config handed to DeepSpeed, and the
instance becomes DeepSpeed's client optimizer. DeepSpeed calls such an optimizer "untested" under ZeRO
and refuses it with optimizer offload; unless the config sets them, ``zero_allow_untested_optimizer``
becomes true and ``zero_force_ds_cpu_optimizer`` false, with a warning. Under ZeRO 1-3 the optimizer
steps flat 1-D partitions, so optimizers whose update depends on a tensor's shape (Adafactor's factored
moments) do not behave as without ZeRO.

Parameter groups (``param_groups``): the config's weight decay applies to weight matrices only; biases,
LayerNorms and the token/position embeddings (``wte``/``wpe``, hence the tied LM head) get none.

Muon (DeepSpeed's ``"Muon"``, ``MuonWithAuxAdam``) needs every parameter tagged ``use_muon``. Grouping,
as in the paper's reference runs: Muon for the 2-D weight matrices inside the transformer blocks (GPT-2:
``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``); the auxiliary Adam for the embeddings,
the LM head, biases and LayerNorm gains. DeepSpeed re-tags every parameter inside ``initialize`` by its
own rule (2-D and no ``embed``/``lm_head`` in the name), which would put GPT-2's ``wte``/``wpe`` and the
tied head on Muon. ``muon_grouping`` applies our tags right after DeepSpeed's and fails loudly if
DeepSpeed no longer gives it the chance.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Callable, Iterator, Optional

import torch
from torch import nn

ENTRY_POINT_GROUP = "gapt_ds.optimizers"
MUON = "muon"


# -- parameter groups -------------------------------------------------------------------------------
def _shape(p: torch.Tensor) -> tuple[int, ...]:
    """A parameter's layer shape, also when ZeRO-3 has replaced its data by a flat partition."""
    return tuple(getattr(p, "ds_shape", None) or p.shape)


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms or embeddings (the DS config's value applies)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if len(_shape(p)) >= 2 and "wte" not in name and "wpe" not in name else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def muon_flags(model: nn.Module) -> dict[str, bool]:
    """``use_muon`` per parameter name: True for the 2-D weight matrices inside the transformer blocks,
    False for embeddings, the output head, biases and norms (they get the auxiliary Adam)."""
    from gapt_ds.hooks import find_blocks

    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        excluded |= {id(p) for p in head.parameters()}
    try:
        blocks = find_blocks(model)
    except ValueError:
        raise ValueError(f"Muon: cannot find the transformer blocks of {type(model).__name__}, whose 2-D weights "
                         "Muon trains; tag the parameters yourself (p.use_muon) and skip muon_grouping") from None
    hidden = {id(p) for block in blocks for p in block.parameters() if len(_shape(p)) >= 2 and id(p) not in excluded}
    return {name: id(p) in hidden for name, p in model.named_parameters()}


def tag_muon(model: nn.Module) -> None:
    """Set ``p.use_muon`` on every parameter from ``muon_flags``."""
    flags = muon_flags(model)
    for name, p in model.named_parameters():
        p.use_muon = flags[name]


# -- name resolution --------------------------------------------------------------------------------
def deepspeed_optimizers() -> list[str]:
    """The optimizer names DeepSpeed builds itself (lower case)."""
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    return sorted(DEEPSPEED_OPTIMIZERS)


def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """``torch.optim`` optimizer classes by name, without those a DeepSpeed name shadows (Adam, Muon, ...)."""
    shadowed = set(deepspeed_optimizers())
    return {name: cls for name, cls in vars(torch.optim).items()
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
            and name.lower() not in shadowed}


def plugin_optimizers() -> dict[str, EntryPoint]:
    """Installed entry points of the group ``gapt_ds.optimizers``, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_optimizers() -> dict[str, list[str]]:
    """Every selectable name, by source."""
    return {"DeepSpeed": deepspeed_optimizers(), "torch.optim": sorted(torch_optimizers()),
            f"entry points ({ENTRY_POINT_GROUP})": sorted(plugin_optimizers())}


def resolve_optimizer(name: str) -> Optional[Callable[..., torch.optim.Optimizer]]:
    """None for a DeepSpeed name (DeepSpeed builds it), else the torch.optim class or the plugin.
    An unknown name is a ValueError listing every available one."""
    key = name.lower()
    if key in deepspeed_optimizers():
        return None
    for found, cls in torch_optimizers().items():
        if found.lower() == key:
            return cls
    for found, ep in plugin_optimizers().items():
        if found.lower() == key:
            try:
                return ep.load()
            except Exception as err:
                raise ValueError(f"optimizer {name!r}: cannot load entry point {ep.value!r} "
                                 f"({type(err).__name__}: {err})") from None
    available = available_optimizers()
    names = [n for group in available.values() for n in group]
    hint = difflib.get_close_matches(key, [n.lower() for n in names], n=1)
    lines = "\n".join(f"  {source}: {', '.join(group) or '(none installed)'}" for source, group in available.items())
    raise ValueError(f"unknown optimizer type {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + f"; available (case-insensitive):\n{lines}")


def _check_params(name: str, factory: Callable, params: dict) -> None:
    """Keys the optimizer's constructor does not take: one ValueError naming all of them."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: the constructor will complain
        return
    parameters = list(signature.parameters.values())[1:]  # the first one takes the parameter groups
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [key for key in params if key not in accepted]
    if bad:
        hints = [f"{key!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(key, accepted, n=1))
                               else "") for key in bad]
        raise ValueError(f"optimizer {name!r} has no parameter {', '.join(hints)}; "
                         f"it takes: {', '.join(accepted)}")


# -- building ---------------------------------------------------------------------------------------
def _warn(message: str) -> None:
    from deepspeed.utils import log_dist

    log_dist(f"gapt-ds: {message}", ranks=[0], level=logging.WARNING)


def _allow_client_optimizer(config: dict, name: str) -> None:
    """Let DeepSpeed accept a client optimizer under ZeRO and with offload, unless the config says no."""
    zero = config.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme") or bool(zero.get("cpu_offload"))
    if stage > 0:
        if config.get("zero_allow_untested_optimizer") is False:
            raise ValueError(f"optimizer {name!r} is not one DeepSpeed tested with ZeRO, and the config sets "
                             "\"zero_allow_untested_optimizer\": false; remove it (or use a DeepSpeed optimizer)")
        if "zero_allow_untested_optimizer" not in config:
            config["zero_allow_untested_optimizer"] = True
            _warn(f"optimizer {name!r} under ZeRO stage {stage} steps flat 1-D partitions of the parameters; "
                  "shape-dependent updates (e.g. factored moments) differ from a run without ZeRO")
    if offload:
        if config.get("zero_force_ds_cpu_optimizer") is True:
            raise ValueError(f"optimizer {name!r} with offload_optimizer: the config sets "
                             "\"zero_force_ds_cpu_optimizer\": true, which only admits DeepSpeed's CPU optimizers; "
                             "set it to false to step this optimizer on the CPU in plain torch (slower)")
        if "zero_force_ds_cpu_optimizer" not in config:
            config["zero_force_ds_cpu_optimizer"] = False
            _warn(f"optimizer {name!r} with offload_optimizer runs on the CPU in plain torch, "
                  "slower than DeepSpeed's CPU Adam")


def build_optimizer(model: nn.Module, ds_config: dict) -> tuple[Optional[torch.optim.Optimizer], list[dict], dict]:
    """``(client_optimizer or None, model_parameters, config for DeepSpeed)`` from the config's
    ``"optimizer"`` block; ``ds_config`` itself is not modified."""
    config = copy.deepcopy(ds_config)
    groups = param_groups(model)
    block = config.get("optimizer")
    if block is None:
        return None, groups, config
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise ValueError(f"the \"optimizer\" block needs a \"type\" name, got {block!r}")
    name = block["type"]
    factory = resolve_optimizer(name)
    if factory is None:  # DeepSpeed's own: it builds it from the block
        return None, groups, config
    if not isinstance(block.get("params") or {}, dict):
        raise ValueError(f"optimizer {name!r}: \"params\" must be an object, got {block['params']!r}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in (block.get("params") or {}).items()}
    _check_params(name, factory, params)
    try:
        optimizer = factory(groups, **params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"optimizer {name!r}: {err}") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer {name!r} built a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    del config["optimizer"]
    _allow_client_optimizer(config, name)
    return optimizer, groups, config


def is_muon(ds_config: dict) -> bool:
    block = ds_config.get("optimizer")
    return isinstance(block, dict) and str(block.get("type", "")).lower() == MUON


@contextlib.contextmanager
def muon_grouping(model: nn.Module, ds_config: dict) -> Iterator[None]:
    """Around ``gapt_ds.initialize``/``deepspeed.initialize``: with DeepSpeed's Muon, our ``use_muon``
    tags (``muon_flags``) replace the ones DeepSpeed sets inside ``initialize``. No-op otherwise."""
    if not is_muon(ds_config):
        yield
        return
    from gapt_ds.deepspeed_compat import after_optimizer_flags

    tag_muon(model)
    with after_optimizer_flags(model, lambda: tag_muon(model), purpose="the Muon grouping"):
        yield
