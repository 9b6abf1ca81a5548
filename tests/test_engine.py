"""The GAPT engine on 2 real DeepSpeed ranks (gloo): exactness against single-process references."""

import math

import pytest
import torch
from tbparse import SummaryReader

import engine_workers as w
from dist import run_ranks
from tb import charted, custom_scalars
from gapt_ds.mbe import global_mbe, patch_mbe

pytestmark = pytest.mark.distributed


def reference(batch: torch.Tensor, mode: str, weight: float, layers=(1, 2)):
    """Single process, no DeepSpeed: CE + w·mean-layer MBE on the concatenated batch, and its gradient."""
    model = w.tiny_model()
    out = model(input_ids=batch, labels=batch, output_hidden_states=True)
    measure = patch_mbe if mode == "patch" else global_mbe
    mbe = [measure(out.hidden_states[i + 1]) for i in layers]  # hidden_states[l+1] = output of block l
    loss = out.loss + weight * torch.stack(mbe).mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.loss.item(), [m.item() for m in mbe], grads


def test_sharded_mbe_value_and_gradient_equal_single_process(tmp_path):
    cases = [(0, "patch"), (3, "patch"), (0, "global"), (2, "global")]
    ranks = run_ranks(w.sharded_mbe_worker, tmp_path, cases=cases, batch_seed=5)
    batch = w.tokens(5, rows=2 * w.MICRO)
    for i, (stage, mode) in enumerate(cases):
        ce, mbe, grads = reference(batch, mode, weight=2.0)
        for rank in ranks:
            got = rank[i]
            assert got["ce"] == pytest.approx(ce, rel=1e-5)
            assert got["mbe"] == pytest.approx(mbe, rel=1e-5), (stage, mode)
            for name, g in grads.items():
                torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=2e-6, msg=f"{stage} {mode} {name}")
    # the MBE term matters: without it the gradient would differ measurably
    ce_only = w.tiny_model()
    ce_only(input_ids=batch, labels=batch).loss.backward()
    diff = max((p.grad - ranks[0][0]["grads"][n]).abs().max().item() for n, p in ce_only.named_parameters())
    assert diff > 1e-3


def test_ranks_with_different_data_share_one_phase_sequence(tmp_path):
    steps, gas = 14, 2
    r0, r1 = run_ranks(w.phases_worker, tmp_path / "ranks", steps=steps, gas=gas, tb_dir=str(tmp_path / "tb"))
    assert r0["local_ce"] != r1["local_ce"]  # different data on each rank...
    for key in ("phase_used", "next_phase", "ce", "mbe", "micro_phases", "gate"):
        assert r0[key] == r1[key], key  # ...identical decisions and statistics
    assert {1, 2} <= set(r0["phase_used"]) and r0["gate"]["switches"] >= 2
    # the gate saw the rank- and micro-batch mean of CE, once per optimizer step (gas=2)
    for step in range(steps):
        local = [r["local_ce"][gas * step + m] for r in (r0, r1) for m in range(gas)]
        assert r0["ce"][step] == pytest.approx(sum(local) / len(local), rel=1e-6)
    assert r0["gate"]["steps"] == steps and r0["global_steps"] == steps
    # each micro-batch trained in the phase decided at the previous step
    assert r0["micro_phases"] == [p for p in r0["phase_used"] for _ in range(gas)]
    assert r0["phase_used"][1:] == r0["next_phase"][:-1]

    scalars = SummaryReader(str(tmp_path / "tb" / "run")).scalars
    tags = set(scalars["tag"])
    expected = {"gapt/ce", "gapt/mbe_mean", "gapt/mbe/layer_1", "gapt/mbe/layer_2", "gapt/phase",
                "gapt/mbe_weight", "gapt/lr", "gapt/grad_norm", "gapt/skipped_steps"}
    assert expected <= tags, expected - tags
    assert {"gapt/mbe_weight/layer_1", "gapt/mbe_weight/layer_2"} <= tags  # the weights applied per layer
    phase = scalars[scalars["tag"] == "gapt/phase"].sort_values("step")
    assert list(phase["step"]) == list(range(1, steps + 1)) and list(phase["value"]) == r0["phase_used"]
    ce = scalars[scalars["tag"] == "gapt/ce"].sort_values("step")
    assert list(ce["value"]) == pytest.approx(r0["ce"], rel=1e-6)
    layout = custom_scalars(tmp_path / "tb" / "run")  # the "GAPT" view of TensorBoard's Custom Scalars tab
    assert list(layout) == ["GAPT"] and "phase (1 memorize, 2 compress)" in layout["GAPT"]
    hidden = {"gapt/skipped_steps", "gapt/lr", "gapt/grad_norm"}
    shown = expected - hidden | {"eval/val_ce", "eval/val_mbe", "eval/ood_exact_match", "gapt/align/all"}
    assert all(charted(layout, tag) for tag in shown) and not any(charted(layout, tag) for tag in hidden)


def test_zero_stages_dtypes_and_offload(tmp_path):
    steps = 4
    cases = [(stage, dtype, False) for dtype in ("fp32", "bf16") for stage in (0, 1, 2, 3)]
    cases += [(2, "fp32", True), (3, "bf16", True)]
    r0, r1 = run_ranks(w.stages_worker, tmp_path, steps=steps, cases=cases)
    for rank in (r0, r1):
        base = rank[(0, "fp32", False)]
        for case, run in rank.items():
            assert all(math.isfinite(x) for x in run["losses"]), case
            if case[1] == "fp32":  # fp32: every stage is the same computation up to reduction order
                assert run["losses"] == pytest.approx(base["losses"], rel=2e-5, abs=1e-6), case
                assert run["gate"]["phase"] == base["gate"]["phase"], case
            else:
                assert run["losses"] == pytest.approx(base["losses"], rel=0.05), case  # bf16: same run, coarser
    assert all(r0[c]["gate"] == r1[c]["gate"] for c in cases)  # rank-consistent in every setting


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_from_checkpoint_continues_identically(tmp_path, stage):
    ckpt = str(tmp_path / "ckpt")
    kw = dict(stage=stage, ckpt_dir=ckpt, save_at=3, total=7)
    full = run_ranks(w.resume_worker, tmp_path / "full", resume=False, **kw)
    resumed = run_ranks(w.resume_worker, tmp_path / "resumed", resume=True, **kw)
    for a, b in zip(full, resumed):
        assert b["state_at_save"] == a["state_at_save"]  # gate state restored exactly
        assert b["losses"] == {s: a["losses"][s] for s in range(3, 7)}  # bitwise (fp32)
        assert b["final_state"] == a["final_state"]
        assert b["client_state"]["user"] == 7 and "gapt" not in b["client_state"]
    assert full[0]["final_state"]["state"]["gate"]["switches"] >= 1


def test_non_finite_loss_on_one_rank_skips_the_step_everywhere(tmp_path):
    cases = [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"), (2, "bf16")]
    r0, r1 = run_ranks(w.skip_worker, tmp_path, cases=cases, bad_step=1)
    for a, b in zip(r0, r1):
        case = (a["stage"], a["dtype"])
        assert math.isnan(b["losses"][1]) and math.isfinite(a["losses"][1]), case
        for rec in (a, b):
            assert rec["unchanged"] and rec["skipped_flag"], case
            assert rec["gapt_skipped"] == 1 and rec["ds_skipped"] == 1 and rec["global_steps"] == 3, case
            assert rec["finite_after"] and math.isfinite(rec["losses"][2]), case


def test_non_finite_gradient_on_one_rank_is_skipped_and_reported_everywhere(tmp_path):
    """Finite CE/MBE, infinite gradient on rank 1: DeepSpeed skips it itself under ZeRO 1-3 and bf16, gapt-ds
    under ZeRO-0 fp32 (where the weights used to turn NaN); either way the step is reported skipped and the
    gate does not advance. (fp16 cannot run on CPU: its loss-scale skips take DeepSpeed's same path.)"""
    cases = [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"), (1, "bf16"), (2, "bf16"), (3, "bf16")]
    ranks = run_ranks(w.grad_skip_worker, tmp_path, cases=cases, bad_step=1)
    for rec in (r for rank in ranks for r in rank):
        case = (rec["stage"], rec["dtype"])
        assert rec["stats_finite"], case  # only the gradient was poisoned
        assert rec["skipped"] == [False, True, False], case
        assert rec["unchanged"] and rec["gate_kept"] and rec["finite_after"], case
        assert rec["gapt_skipped"] == 1, case


def test_any_model_with_explicit_modules_and_scalar_loss(tmp_path):
    r0, r1 = run_ranks(w.mlp_worker, tmp_path, steps=6)
    assert r0 == r1 and r0["layers"] == [0]
    assert r0["mbe"][-1] < r0["mbe"][0]  # compression lowers the hidden layer's entropy


def test_bad_model_or_layers_fail_before_deepspeed_starts(monkeypatch):
    import deepspeed

    import gapt_ds

    def not_started(**kwargs):
        raise AssertionError("deepspeed.initialize was called for an invalid configuration")

    monkeypatch.setattr(deepspeed, "initialize", not_started)

    mlp = w.TwoLayerMLP()
    with pytest.raises(ValueError, match="mbe_modules"):
        gapt_ds.initialize(model=mlp, model_parameters=mlp.parameters(), config=w.ds_config())
    model = w.tiny_model()
    with pytest.raises(ValueError, match=r"\[7\] out of range for a model with 4 blocks"):
        gapt_ds.initialize(model=model, model_parameters=model.parameters(),
                           config=w.ds_config(gapt={"layers": [1, 7]}))
    with pytest.raises(ValueError, match="gapt.patch_szie"):
        gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=w.ds_config(gapt={"patch_szie": 4}))
    with pytest.raises(ValueError, match="gapt.algorithm: unknown algorithm 'sgd'; available: ce, gapt"):
        gapt_ds.initialize(model=model, model_parameters=model.parameters(),
                           config=w.ds_config(gapt={"algorithm": "sgd"}))


def test_destroy_releases_engine_writer_and_process_groups(tmp_path):
    """A forgotten engine kept its process groups, and their gloo threads, alive into interpreter shutdown,
    where a worker thread finishing a collective aborted the process (SIGABRT, "terminate called without
    an active exception"). After ``destroy()`` and ``shutdown_process_groups`` nothing of it is left."""
    for stage in (0, 3):
        for r in run_ranks(w.teardown_worker, tmp_path / f"s{stage}", stage=stage, tb_dir=str(tmp_path / "tb")):
            assert not r["engine_alive"], stage
            assert "_AsyncWriterThread" not in r["python_threads"], stage  # TensorBoard writer closed and joined
            # ZeRO-3 pins one group from C++ (see GaptEngineMixin.destroy); its workers exit via os._exit
            if stage < 3:
                assert not [t for t in r["native_threads"] if "gloo" in t], (stage, r["native_threads"])


def test_a_config_without_tensorboard_warns_once_what_to_add(tmp_path):
    (r0,) = run_ranks(w.tensorboard_warning_worker, tmp_path / "out", world=1, tb_dir=str(tmp_path / "tb"))
    assert len(r0["warnings"]) == 1, r0
    message = r0["warnings"][0]
    assert 'no enabled "tensorboard" block' in message and '"tensorboard": {"enabled": true' in message


def test_activation_checkpointing_changes_no_loss_phase_or_gradient(tmp_path):
    """Blocks recomputed in backward: MBE is measured once per forward and back-propagates exactly, under ZeRO 0
    and 3, patch and global (all-reduced) MBE, through memorization and compression steps, and the alignment
    monitor's cosines are unchanged."""
    cases = [(0, "patch"), (3, "patch"), (3, "global")]
    ranks = run_ranks(w.checkpointing_worker, tmp_path, cases=cases, steps=5)
    for rank in ranks:
        for stage, mode in cases:
            plain, ckpt = rank[(stage, mode, False)], rank[(stage, mode, True)]
            assert 2 in [s["phase"] for s in plain], "the run never trained in compression"
            for step, (a, b) in enumerate(zip(plain, ckpt)):
                where = f"ZeRO-{stage} {mode} step {step}"
                for key in ("loss", "ce", "mbe", "phase", "next_phase"):
                    assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (where, key)
                assert b["alignment"].keys() == a["alignment"].keys() and a["alignment"]
                assert list(b["alignment"].values()) == pytest.approx(list(a["alignment"].values()), abs=1e-6)
                for name, g in a["grads"].items():
                    torch.testing.assert_close(b["grads"][name], g, rtol=1e-5, atol=1e-7, msg=f"{where} {name}")
