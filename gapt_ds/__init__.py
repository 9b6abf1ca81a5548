"""gapt-ds: GAPT (Gated Phase Transition, arXiv 2505.08727) memorization/compression cycles for DeepSpeed.

``gapt_ds.initialize`` is ``deepspeed.initialize`` plus a validated ``"gapt"`` config block.
"""

__version__ = "0.1.0"


def initialize(*args, **kwargs):
    """``deepspeed.initialize`` with GAPT: the same arguments and return tuple, plus ``mbe_modules=``.
    Documented at ``gapt_ds.engine.initialize_engine`` (imported on first use: DeepSpeed is slow to import)."""
    from gapt_ds.engine import initialize_engine

    return initialize_engine(*args, **kwargs)


def shutdown(code: int = 0):
    """End a training script's process safely: every process group is destroyed, exit handlers run and
    stdio is flushed, then the process exits with ``code`` without interpreter finalization.

    Call it last, after ``engine.destroy()`` (custom loops) or ``trainer.train()`` (``GaptTrainer``).
    A process that ends normally while its gloo/NCCL groups are alive can abort at interpreter shutdown
    (SIGABRT, ``terminate called without an active exception``): a communicator thread may still be releasing
    a finished collective's tensors. ``gapt-ds train`` ends this way by itself.
    """
    from gapt_ds.distributed import exit_process, shutdown_process_groups

    shutdown_process_groups()
    exit_process(code)
