"""Every place gapt-ds relies on a DeepSpeed internal, one named function each (``skip.py`` holds the
other one: the optimizer wrappers' overflow path). Each is checked by ``tests/test_deepspeed_compat.py``
against the installed DeepSpeed, so a DeepSpeed release that changes one fails there, by name.

- ``parsed_config``: ``engine._config._param_dict``, the config dict DeepSpeed parsed.
- ``after_optimizer_flags``: ``deepspeed.set_optimizer_flags``, which ``deepspeed.initialize`` calls on
  the model (it sets ``use_muon`` on every parameter).
- ``skip_cpu_shm_build``: ``deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"]``.
- ``autocast``: ``deepspeed.runtime.torch_autocast.autocast_if_enabled``, the engine's forward autocast.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import nn


def parsed_config(engine: Any) -> dict:
    """The DeepSpeed config dict an engine was built from, also when DeepSpeed found it by itself
    (``args.deepspeed_config``): DeepSpeed keeps it only as ``engine._config._param_dict``."""
    return engine._config._param_dict


@contextlib.contextmanager
def after_optimizer_flags(model: nn.Module, hook: Callable[[], None], purpose: str) -> Iterator[None]:
    """Around ``deepspeed.initialize``: call ``hook()`` right after DeepSpeed's ``set_optimizer_flags``
    has tagged ``model``'s parameters. A RuntimeError naming ``purpose`` after the block if DeepSpeed
    never called it."""
    import deepspeed

    original = deepspeed.set_optimizer_flags
    applied: list[bool] = []

    def set_optimizer_flags(config_class: Any, m: nn.Module) -> None:
        original(config_class, m)
        if m is model:
            hook()
            applied.append(True)

    deepspeed.set_optimizer_flags = set_optimizer_flags
    try:
        yield
    finally:
        deepspeed.set_optimizer_flags = original
    if not applied:
        raise RuntimeError(f"gapt-ds: this DeepSpeed did not tag parameters through deepspeed.set_optimizer_flags, "
                           f"so {purpose} could not be applied; check gapt_ds.deepspeed_compat against it")


def skip_cpu_shm_build() -> None:
    """On CPU, stop DeepSpeed from JIT-compiling its shared-memory comm op (~40 s on first use).

    The op only serves inference all-reduce; training collectives go through torch.distributed/gloo.
    """
    try:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except (ImportError, AttributeError):  # a DeepSpeed without that op: nothing to skip
        pass


def autocast(engine: Any):
    """The autocast context DeepSpeed's forward runs the module in (a no-op unless configured), for
    forwards that call ``engine.module`` directly."""
    from deepspeed.runtime.torch_autocast import autocast_if_enabled

    return autocast_if_enabled(engine)
