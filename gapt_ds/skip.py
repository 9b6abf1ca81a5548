"""Skip one optimizer step through DeepSpeed's own overflow path, whatever the optimizer wrapper.

DeepSpeed skips steps on fp16 overflow: the wrapper clears its accumulated gradients, sets
``optimizer.overflow``, and the engine then counts ``skipped_steps`` and leaves the LR scheduler
alone. gapt-ds reuses that path when CE or MBE is non-finite on any rank, by making the wrapper
report an overflow for exactly one ``engine.step()``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator


def _overflow(opt) -> None:
    opt.overflow = True
    opt._global_grad_norm = math.inf


@contextlib.contextmanager
def forced_overflow(optimizer) -> Iterator[None]:
    """Within this context, ``optimizer.step()`` takes the wrapper's overflow (skip) branch."""
    patched: dict[str, object] = {}
    if hasattr(optimizer, "_overflow_check_and_loss_scale_update"):  # ZeRO-3

        def check(update_scale: bool = True) -> bool:
            _overflow(optimizer)
            return optimizer._loss_scale_update_and_overflow_cleanup() if update_scale else True

        patched["_overflow_check_and_loss_scale_update"] = check
    elif hasattr(optimizer, "check_grad_overflow") and hasattr(optimizer, "has_overflow"):  # ZeRO-1/2
        patched["check_grad_overflow"] = True
        patched["has_overflow"] = lambda *a, **k: True
    elif type(optimizer).__name__ == "BF16_Optimizer":  # ZeRO-0 bf16

        def step(closure=None) -> None:
            _overflow(optimizer)
            optimizer.clear_hp_grads()
            optimizer.clear_lp_grads()

        patched["step"] = step
    else:  # a plain torch optimizer (ZeRO-0 fp32) or an fp16 wrapper: update nothing, report overflow

        def step(closure=None) -> None:
            _overflow(optimizer)
            optimizer.zero_grad(set_to_none=True)

        patched["step"] = step
    own = vars(optimizer)
    saved = {k: own[k] for k in (*patched, "overflow", "_global_grad_norm") if k in own}
    for k, v in patched.items():
        setattr(optimizer, k, v)
    try:
        yield
    finally:
        for k in patched:
            own.pop(k, None)
        # attributes a plain optimizer did not have must not linger (the engine reads them every step)
        for k in ("overflow", "_global_grad_norm"):
            if k not in saved:
                own.pop(k, None)
        own.update({k: v for k, v in saved.items() if k in patched})


def grad_norm(params):
    """A 0-dim tensor: the gradients' global L2 norm (0 without gradients). Non-finite iff an inf or NaN is
    anywhere, DeepSpeed's own overflow test under ZeRO 1-3. No host sync: it can ride on a collective."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class DivergenceError(RuntimeError):
    """Too many consecutive optimizer steps were skipped: the run has diverged (the same on every rank)."""

    exit_code = 1
    same_on_every_rank = True


def check_divergence(consecutive_skips: int, limit: int, step: int) -> None:
    """Raise ``DivergenceError`` once ``limit`` (> 0) optimizer steps in a row were skipped."""
    if limit and consecutive_skips >= limit:
        raise DivergenceError(
            f"the last {consecutive_skips} optimizer steps (up to step {step}) were all skipped for non-finite "
            f"loss, statistics or gradients (--max-skipped-steps {limit}): the run has diverged; nothing was "
            "saved after the last checkpoint. Lower the learning rate (or mbe_weight) and resume from a checkpoint")
