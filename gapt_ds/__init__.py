"""gapt-ds: GAPT (Gated Phase Transition, arXiv 2505.08727) memorization/compression cycles for DeepSpeed.

``gapt_ds.initialize`` is ``deepspeed.initialize`` plus a validated ``"gapt"`` config block.
"""

__version__ = "0.1.0"


def initialize(*args, **kwargs):
    """``deepspeed.initialize`` with GAPT: the same arguments and return tuple, plus ``mbe_modules=``.
    Documented at ``gapt_ds.engine.initialize_engine`` (imported on first use: DeepSpeed is slow to import)."""
    from gapt_ds.engine import initialize_engine

    return initialize_engine(*args, **kwargs)
