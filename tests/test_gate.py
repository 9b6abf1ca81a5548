"""PhaseGate driven by scripted loss sequences: every transition, counter and resume."""

import math

import pytest

from gapt_ds.config import GateConfig
from gapt_ds.gate import COMPRESS, MEMORIZE, PhaseGate


def drive(gate, steps):
    return [gate.update(ce, mbe) for ce, mbe in steps]


def test_ce_plateau_enters_compression_after_patience():
    gate = PhaseGate(GateConfig(patience_memorize=3, patience_compress=5, ce_delta=0.01))
    # 5.0 -> 4.0 improves (s_m = 0), then gains of 0.005 < δ stall.
    phases = drive(gate, [(5.0, 1.0), (4.0, 1.0), (3.995, 1.0), (3.99, 1.0)])
    assert phases == [MEMORIZE] * 4 and gate.stall_memorize == 2
    assert gate.update(3.989, 1.0) == COMPRESS
    assert gate.stall_compress == 0 and gate.switches == 1
    assert gate.ce_min == 3.989  # reset_ce_min is off by default


def test_improvement_resets_memorize_counter():
    gate = PhaseGate(GateConfig(patience_memorize=3))
    drive(gate, [(5.0, 1.0), (5.0, 1.0), (5.0, 1.0)])
    assert gate.stall_memorize == 2
    gate.update(4.5, 1.0)
    assert gate.stall_memorize == 0 and gate.phase == MEMORIZE


def compressing_gate(**kw):
    settings = dict(patience_memorize=1, patience_compress=3, mbe_delta=0.01, spike_tolerance=0.1)
    settings.update(kw)
    gate = PhaseGate(GateConfig(**settings))
    drive(gate, [(2.0, 3.0), (2.0, 3.0)])
    assert gate.phase == COMPRESS
    return gate


def test_ce_spike_returns_to_memorization():
    gate = compressing_gate()
    assert gate.update(2.19, 2.9) == COMPRESS  # within τ of the minimum 2.0
    assert gate.update(2.21, 2.8) == MEMORIZE  # 2.21 > 2.0 · 1.1
    assert gate.stall_memorize == 0


def test_mbe_plateau_returns_to_memorization():
    gate = compressing_gate()
    assert gate.update(2.0, 3.0) == COMPRESS  # first compression step always improves (M_min reset)
    assert gate.stall_compress == 0
    assert drive(gate, [(2.0, 2.995), (2.0, 2.99)]) == [COMPRESS, COMPRESS]
    assert gate.stall_compress == 2
    assert gate.update(2.0, 2.5) == COMPRESS and gate.stall_compress == 0  # real MBE gain resets s_c
    assert drive(gate, [(2.0, 2.5)] * 3) == [COMPRESS, COMPRESS, MEMORIZE]


def test_any_layer_improving_counts():
    gate = compressing_gate()
    gate.update(2.0, [3.0, 3.0])
    gate.update(2.0, [2.5, 3.0])  # layer 0 improves
    assert gate.stall_compress == 0 and gate.mbe_min == [2.5, 3.0]
    gate.update(2.0, [2.6, 2.995])  # neither layer beats its own minimum by δ_c
    assert gate.stall_compress == 1


def test_aggregate_mbe_mode_uses_layer_mean():
    gate = compressing_gate(mbe_any_layer=False)
    gate.update(2.0, [3.0, 3.0])
    gate.update(2.0, [2.5, 3.5])  # mean unchanged although layer 0 improved
    assert gate.stall_compress == 1 and gate.mbe_min == [3.0]


def test_minima_reset_on_entering_compression():
    gate = compressing_gate(reset_ce_min=True)
    assert gate.ce_min == math.inf and gate.mbe_min == []
    gate.update(2.5, 3.0)  # no spike: the CE minimum restarts from this step
    assert gate.phase == COMPRESS and gate.ce_min == 2.5


def test_relative_improvement():
    gate = PhaseGate(GateConfig(patience_memorize=2, improvement="relative", ce_delta=0.01))
    gate.update(10.0, 1.0)
    gate.update(9.95, 1.0)  # 0.5% < 1%
    assert gate.stall_memorize == 1
    gate.update(9.8, 1.0)  # 1.5% of 9.95
    assert gate.stall_memorize == 0


def test_state_dict_resume_gives_identical_continuation():
    script = [(5 - 0.001 * i + (1.0 if i % 17 == 0 else 0), [3 - 0.001 * i, 2 + 0.001 * (i % 5)]) for i in range(120)]
    settings = dict(patience_memorize=4, patience_compress=3, mbe_delta=0.002)
    full = PhaseGate(GateConfig(**settings))
    expected = drive(full, script)
    assert full.switches >= 6  # the script exercises both directions several times

    first = PhaseGate(GateConfig(**settings))
    drive(first, script[:55])
    resumed = PhaseGate(GateConfig(**settings))
    resumed.load_state_dict(first.state_dict())
    assert drive(resumed, script[55:]) == expected[55:]
    assert resumed.state_dict() == full.state_dict()


def test_bad_settings_and_inputs():
    with pytest.raises(ValueError) as err:
        GateConfig.checked("gate", patience_memorize=0, improvment="absolute", spike_tolerance=-1)
    msg = str(err.value)
    assert "3 problems" in msg and "gate.patience_memorize" in msg and "did you mean 'improvement'" in msg
    gate = PhaseGate()
    with pytest.raises(ValueError, match="non-finite"):
        gate.update(float("nan"), 1.0)
    with pytest.raises(ValueError, match="empty"):
        gate.update(1.0, [])
    with pytest.raises(ValueError, match="missing"):
        gate.load_state_dict({"phase": 1})
