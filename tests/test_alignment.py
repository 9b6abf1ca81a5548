"""Gradient-alignment monitor on 2 real ranks: cosines equal a single-process autograd reference under
ZeRO 0-3, and measuring leaves training bitwise unchanged."""

import pytest
import torch

import engine_workers as w
from dist import run_ranks
from gapt_ds.mbe import patch_mbe
from gapt_ds.train import cpu_compiler

pytestmark = pytest.mark.distributed


def reference_cosines(batch: torch.Tensor, layers=(1, 2)) -> dict[str, float]:
    """Unsharded model, concatenated batch, torch.autograd.grad of CE and of the mean layer MBE."""
    model = w.tiny_model()
    params = [p for p in model.parameters()]
    out = model(input_ids=batch, labels=batch, output_hidden_states=True)
    mbe = torch.stack([patch_mbe(out.hidden_states[i + 1]) for i in layers]).mean()
    g_ce = torch.autograd.grad(out.loss, params, retain_graph=True)
    g_mbe = torch.autograd.grad(mbe, params, allow_unused=True)
    g_mbe = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_mbe)]

    def cos(idx):
        a = torch.cat([g_ce[i].flatten() for i in idx]).double()
        b = torch.cat([g_mbe[i].flatten() for i in idx]).double()
        return (a @ b / (a.norm() * b.norm())).item() if b.norm() > 0 else None  # undefined: no MBE gradient

    ids = {id(p): i for i, p in enumerate(params)}
    result = {"all": cos(range(len(params)))}
    for b, block in enumerate(model.transformer.h):
        result[f"block_{b}"] = cos([ids[id(p)] for p in block.parameters()])
    return {k: v for k, v in result.items() if v is not None}


def test_cosines_equal_the_single_process_reference_under_every_zero_stage(tmp_path):
    stages = [0, 1, 2, 3]
    r0, r1 = run_ranks(w.alignment_worker, tmp_path, stages=stages, batch_seed=9)
    ref = reference_cosines(w.tokens(9, rows=2 * w.MICRO))
    assert abs(ref["all"]) > 1e-3 and "block_3" not in ref  # non-trivial; the last block gets no MBE gradient
    for stage in stages:
        assert r0[stage] == r1[stage]  # one all-reduce: every rank holds the same numbers
        assert set(r0[stage]) == set(ref)
        for group, value in ref.items():
            assert r0[stage][group] == pytest.approx(value, abs=2e-4), (stage, group)


@pytest.mark.parametrize("stage", [0, 3])
def test_measuring_does_not_change_training(tmp_path, stage):
    kw = dict(stage=stage, steps=5)
    on = run_ranks(w.monitor_invariance_worker, tmp_path / "on", every=2, **kw)
    off = run_ranks(w.monitor_invariance_worker, tmp_path / "off", every=0, **kw)
    assert on == off  # bitwise: the same float values, dropout included


@pytest.mark.skipif(cpu_compiler() is None, reason="no C++ compiler: torch.compile's inductor cannot build CPU kernels")
def test_compiled_engine_measures_even_with_an_inductor_cache_from_a_run_without_the_monitor(tmp_path):
    """A backward compiled (and cached) by a run without the monitor donates its buffers and refuses the
    retain_graph of a one-forward measurement: a compiled engine measures with two forwards."""
    cache = str(tmp_path / "inductor")
    run_ranks(w.compiled_alignment_worker, tmp_path / "prime", world=1, cache_dir=cache, every=0)
    (got,) = run_ranks(w.compiled_alignment_worker, tmp_path / "measure", world=1, cache_dir=cache, every=1)
    for compiled, eager in zip(got[True], got[False]):
        assert compiled.keys() == eager.keys() and "all" in eager
        assert list(compiled.values()) == pytest.approx(list(eager.values()), abs=1e-5)
