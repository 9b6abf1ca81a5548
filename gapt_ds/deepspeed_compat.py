"""Every place gapt-ds relies on a DeepSpeed internal, one named function each (``skip.py`` holds the
other one: the optimizer wrappers' overflow path). Each is checked by ``tests/test_deepspeed_compat.py``
against the installed DeepSpeed, so a DeepSpeed release that changes one fails there, by name.

- ``parsed_config``: ``engine._config._param_dict``, the config dict DeepSpeed parsed.
- ``after_optimizer_flags``: ``deepspeed.set_optimizer_flags``, which ``deepspeed.initialize`` calls on
  the model (it sets ``use_muon`` on every parameter).
- ``skip_cpu_shm_build``: ``deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"]``.
- ``announce_op_builds``: ``OpBuilder.jit_load`` (``deepspeed.ops.op_builder.builder``), which
  ``OpBuilder.load`` calls for an op that was not built at install time.
- ``autocast``: ``deepspeed.runtime.torch_autocast.autocast_if_enabled``, the engine's forward autocast.
- ``tensorboard_writer``, ``close_tensorboard``: ``engine.monitor.tb_monitor.summary_writer``, the
  monitor's TensorBoard writer.
- ``remove_module_hooks``: ``engine.module_forward_pre_hook`` / ``module_forward_post_hook``, the forward
  hooks DeepSpeed puts on the module.
- ``clear_zero3_param_state``: the ``ds_*`` attributes ZeRO-3 puts in each parameter's ``__dict__``.
- ``to_universal``: ``deepspeed.checkpoint.ds_to_universal.main``, DeepSpeed's converter script, called with
  the argument namespace its command line would build.
- ``repair_zero3_universal_load``: ZeRO-3's universal load (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``,
  DeepSpeed 0.19.8) gives every optimizer parameter group the hyperparameters of group 0 (e.g. weight decay
  on the biases and LayerNorms), and one shared ``step`` tensor to every parameter group's state, which
  torch's Adam then advances once per group and optimizer step (a wrong bias correction). This undoes both.
"""

from __future__ import annotations

import contextlib
import os
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


def on_cpu() -> bool:
    """Whether DeepSpeed runs on the CPU accelerator (``DS_ACCELERATOR=cpu``, or no GPU found)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


@contextlib.contextmanager
def announce_op_builds(say: Callable[[str], None]) -> Iterator[None]:
    """Inside the block, ``say(op_name)`` each time DeepSpeed JIT-loads a C++/CUDA op: a first build takes
    minutes (FusedAdam on CPU: ~1 min on 2 cores) and DeepSpeed prints nothing while it compiles."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    original = OpBuilder.jit_load

    def jit_load(self, verbose=True):
        say(self.name)
        return original(self, verbose)

    OpBuilder.jit_load = jit_load
    try:
        yield
    finally:
        OpBuilder.jit_load = original


def autocast(engine: Any):
    """The autocast context DeepSpeed's forward runs the module in (a no-op unless configured), for
    forwards that call ``engine.module`` directly."""
    from deepspeed.runtime.torch_autocast import autocast_if_enabled

    return autocast_if_enabled(engine)


def tensorboard_writer(engine: Any) -> Any:
    """The ``SummaryWriter`` of DeepSpeed's monitor (None without a tensorboard block, and off rank 0)."""
    return getattr(getattr(engine.monitor, "tb_monitor", None), "summary_writer", None)


def close_tensorboard(engine: Any) -> None:
    """Flush and close the TensorBoard writer of DeepSpeed's monitor (its writer thread is joined)."""
    writer = tensorboard_writer(engine)
    if writer is not None:
        writer.close()


def remove_module_hooks(engine: Any) -> None:
    """Remove the forward hooks DeepSpeed registered on the module; they reference the engine."""
    for hook in (getattr(engine, "module_forward_pre_hook", None), getattr(engine, "module_forward_post_hook", None)):
        if hook is not None:
            hook.remove()


def clear_zero3_param_state(params: list) -> None:
    """Drop ZeRO-3's per-parameter state (groups, gather closures), which outlives ``engine.destroy()``."""
    for p in params:
        p.__dict__.clear()


def default_cuda_arch_list() -> None:
    """Set ``TORCH_CUDA_ARCH_LIST`` to the visible GPUs' compute capabilities when unset. Without it DeepSpeed's
    JIT op builds (fused Adam) parse torch's arch list, which names ``sm_90a`` on Hopper builds of torch, and
    fail with ``invalid literal for int() with base 10: '0a'`` (DeepSpeed issue 7589); measured on an H100
    with torch 2.11 and DeepSpeed 0.19.8. Building for the local GPUs only is also faster."""
    import torch

    if "TORCH_CUDA_ARCH_LIST" in os.environ or not torch.cuda.is_available():
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list(
        torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))


def arch_list(capabilities) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for (major, minor) capabilities: ``[(9, 0), (8, 0), (9, 0)]`` -> ``"8.0;9.0"``."""
    return ";".join(f"{major}.{minor}" for major, minor in sorted(set(capabilities)))


def to_universal(input_dir: str, output_dir: str) -> None:
    """Convert one ZeRO 1-3 checkpoint tag into DeepSpeed's universal form in ``output_dir`` (which a
    ``"checkpoint": {"load_universal": true}`` engine loads on any world size), in this process: one worker
    each, so no subprocesses. ``inject_missing_state`` adds the version record a model without
    ``universal_checkpoint_info`` lacks. The converter also writes ``latest_universal`` next to ``output_dir``."""
    import argparse

    from deepspeed.checkpoint import ds_to_universal

    ds_to_universal.main(argparse.Namespace(input_folder=input_dir, output_folder=output_dir, num_extract_workers=1,
                                            num_merge_workers=1, keep_temp_folder=False, strict=True,
                                            inject_missing_state=True))


def repair_zero3_universal_load(engine: Any, universal_dir: str) -> None:
    """After a ZeRO-3 engine loaded ``universal_dir``: give each parameter group of the wrapped optimizer
    the hyperparameters saved for it (``zero/optimizer_state.pt``), not group 0's, and each parameter
    state its own ``step`` tensor."""
    import torch

    from gapt_ds.safe_load import safe_load

    saved = safe_load(f"{universal_dir}/zero/optimizer_state.pt")["optimizer_state_dict"]["param_groups"]
    optimizer = engine.optimizer.optimizer
    if len(saved) != len(optimizer.param_groups):
        raise ValueError(f"{universal_dir}: the checkpoint's optimizer has {len(saved)} parameter groups, this "
                         f"run's {len(optimizer.param_groups)}")
    for group, values in zip(optimizer.param_groups, saved):
        group.update({k: v for k, v in values.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
