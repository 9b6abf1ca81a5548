"""gapt-ds: GAPT (Gated Phase Transition, arXiv 2505.08727) memorization/compression cycles for DeepSpeed.

``gapt_ds.initialize`` is ``deepspeed.initialize`` plus a validated ``"gapt"`` config block.
"""

__version__ = "0.1.0"


def initialize(*args, **kwargs):
    """See ``gapt_ds.engine.initialize`` (imported lazily: DeepSpeed is slow to import)."""
    from gapt_ds.engine import initialize as _initialize

    return _initialize(*args, **kwargs)
