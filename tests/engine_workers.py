"""Per-rank bodies of the multi-rank engine tests (run through tests/dist.py on real gloo ranks)."""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from gapt_ds.models import build_gpt2, gpt2_config

VOCAB, SEQ, MICRO = 64, 16, 2
FAST_GATE = {"patience_memorize": 2, "patience_compress": 2, "ce_delta": 0.05, "mbe_delta": 0.05}


def tiny_model():
    return build_gpt2(gpt2_config("tiny", vocab_size=VOCAB, seq_len=SEQ), seed=0)


def ds_config(stage: int = 0, dtype: str = "fp32", gas: int = 1, gapt: Optional[dict] = None,
              tb_dir: Optional[str] = None, offload: bool = False) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": gas,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "torch_adam": True}},
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9,
        "gapt": gapt or {},
    }
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    if offload:  # optimizer states (and, under ZeRO-3, parameters) in CPU memory
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        if stage == 3:
            cfg["zero_optimization"]["offload_param"] = {"device": "cpu"}
    if tb_dir:
        cfg["tensorboard"] = {"enabled": True, "output_path": tb_dir, "job_name": "run"}
    return cfg


def make_engine(cfg: dict, model=None):
    import gapt_ds

    model = model or tiny_model()
    engine, *_ = gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=copy.deepcopy(cfg))
    return engine


def tokens(seed: int, rows: int = MICRO) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, SEQ), generator=torch.Generator().manual_seed(seed))


def train_step(engine, step: int, rank: int, gas: int = 1) -> list[float]:
    """One optimizer step over ``gas`` micro-batches, data a function of (step, micro, rank) only."""
    losses = []
    for micro in range(gas):
        x = tokens(1000 * step + 10 * micro + rank)
        out = engine(input_ids=x, labels=x)
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.item())
    return losses


def full_grads(engine) -> dict[str, torch.Tensor]:
    from deepspeed.utils import safe_get_full_grad

    if engine.zero_optimization_stage() == 0:
        return {n: p.grad.detach().clone().float() for n, p in engine.module.named_parameters()}
    return {n: safe_get_full_grad(p).detach().clone().float() for n, p in engine.module.named_parameters()}


def full_params(engine) -> dict[str, torch.Tensor]:
    import deepspeed

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=engine.zero_optimization_stage() == 3):
        return {n: p.detach().clone().float() for n, p in params.items()}


# -- workers -----------------------------------------------------------------------------------------
def sharded_mbe_worker(rank: int, cases: list[tuple[int, str]], batch_seed: int) -> list[dict]:
    """Each rank trains on its half of one global batch; returns all-reduced MBE and full gradients."""
    results = []
    x = tokens(batch_seed, rows=2 * MICRO)[rank * MICRO : (rank + 1) * MICRO]
    for stage, mode in cases:
        engine = make_engine(ds_config(stage, gapt={"phase": "compress", "mbe_mode": mode, "mbe_weight": 2.0}))
        out = engine(input_ids=x, labels=x)
        engine.backward(out.loss)
        grads = full_grads(engine)
        engine.step()
        results.append({"stage": stage, "mode": mode, "mbe": engine.last_step.mbe, "ce": engine.last_step.ce,
                        "grads": grads})
    return results


def phases_worker(rank: int, steps: int, gas: int, tb_dir: Optional[str] = None) -> dict:
    """Ranks see different data; returns the per-step phase sequence and statistics this rank saw."""
    engine = make_engine(ds_config(0, gas=gas, gapt={"gate": FAST_GATE, "mbe_weight": 0.5}, tb_dir=tb_dir))
    record = {"phase_used": [], "next_phase": [], "ce": [], "mbe": [], "local_ce": [], "micro_phases": []}
    for step in range(steps):
        for micro in range(gas):
            x = tokens(1000 * step + 10 * micro + rank)
            out = engine(input_ids=x, labels=x)
            record["micro_phases"].append(engine.last_micro.phase)
            record["local_ce"].append(engine.last_micro.ce.item())
            engine.backward(out.loss)
            engine.step()
        s = engine.last_step
        assert s.step == step + 1, (s.step, step)
        for key, value in (("phase_used", s.phase), ("next_phase", s.next_phase), ("ce", s.ce), ("mbe", s.mbe)):
            record[key].append(value)
    record["gate"] = engine.gate.state_dict()
    record["global_steps"] = engine.global_steps
    return record


def stages_worker(rank: int, steps: int, cases: list[tuple[int, str, bool]]) -> dict:
    """The same GAPT run under each (ZeRO stage, dtype, offload): per-step local losses and gate state."""
    out = {}
    for stage, dtype, offload in cases:
        engine = make_engine(ds_config(stage, dtype, gapt={"gate": FAST_GATE}, offload=offload))
        losses = [train_step(engine, s, rank)[0] for s in range(steps)]
        out[(stage, dtype, offload)] = {"losses": losses, "gate": engine.gate.state_dict()}
    return out


def resume_worker(rank: int, stage: int, ckpt_dir: str, save_at: int, total: int, resume: bool) -> dict:
    """Uninterrupted run that saves at ``save_at`` (resume=False), or a fresh engine that loads it."""
    engine = make_engine(ds_config(stage, gapt={"gate": FAST_GATE}))
    losses, state_at_save = {}, None
    if resume:
        path, client_state = engine.load_checkpoint(ckpt_dir, tag=f"step{save_at}")
        assert path is not None
        state_at_save = engine.gapt_state_dict()
        start = save_at
    else:
        start = 0
    for step in range(start, total):
        if not resume and step == save_at:
            engine.save_checkpoint(ckpt_dir, tag=f"step{save_at}", client_state={"user": 7})
            state_at_save = engine.gapt_state_dict()
        losses[step] = train_step(engine, step, rank)[0]
    return {"losses": losses, "state_at_save": state_at_save, "final_state": engine.gapt_state_dict(),
            "client_state": client_state if resume else None}


def skip_worker(rank: int, cases: list[tuple[int, str]], bad_step: int) -> list[dict]:
    """Rank 1 produces NaN logits on one step: every rank must skip that optimizer step identically."""
    results = []
    for stage, dtype in cases:
        engine = make_engine(ds_config(stage, dtype, gapt={"phase": "compress"}))
        poison = {"on": False}

        def nan_logits(module, args, output):
            return output * float("nan") if poison["on"] else output

        engine.module.lm_head.register_forward_hook(nan_logits)
        record = {"stage": stage, "dtype": dtype, "losses": []}
        for step in range(bad_step + 2):
            poison["on"] = step == bad_step and rank == 1
            before = full_params(engine) if step == bad_step else None
            record["losses"].append(train_step(engine, step, rank)[0])
            if before is not None:
                after = full_params(engine)
                record["unchanged"] = all(torch.equal(before[n], after[n]) for n in before)
                record["skipped_flag"] = engine.last_step.skipped
        record["gapt_skipped"] = engine.gapt_skipped_steps
        record["ds_skipped"] = engine.skipped_steps
        record["global_steps"] = engine.global_steps
        record["finite_after"] = all(torch.isfinite(p).all().item() for p in full_params(engine).values())
        results.append(record)
    return results


class TwoLayerMLP(torch.nn.Module):
    """Not a transformer: MBE is measured on ``hidden`` (passed explicitly); forward returns an L1 loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.hidden, self.out = torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10)

    def forward(self, x, y):
        return (self.out(self.hidden(self.inp(x))) - y).abs().mean()


def mlp_worker(rank: int, steps: int) -> dict:
    import gapt_ds

    model = TwoLayerMLP()
    cfg = ds_config(2, gapt={"mbe_mode": "global", "layers": "all", "phase": "compress"})
    cfg["train_micro_batch_size_per_gpu"] = 16
    engine, *_ = gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=cfg,
                                    mbe_modules=[model.hidden])
    g = torch.Generator().manual_seed(rank)
    mbe = []
    for _ in range(steps):
        x = torch.randn(16, 10, generator=g)
        loss = engine(x, torch.zeros(16, 10))
        engine.backward(loss)
        engine.step()
        mbe.append(engine.last_step.mbe[0])
    return {"mbe": mbe, "layers": engine.mbe_layer_ids}


def alignment_worker(rank: int, stages: list[int], batch_seed: int) -> dict:
    """Each rank holds half of one global batch; returns the monitor's cosines at step 0 per ZeRO stage."""
    x = tokens(batch_seed, rows=2 * MICRO)[rank * MICRO : (rank + 1) * MICRO]
    out = {}
    for stage in stages:
        engine = make_engine(ds_config(stage, gapt={"alignment_every": 1, "phase": "memorize"}))
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        out[stage] = engine.last_step.alignment
    return out


def monitor_invariance_worker(rank: int, stage: int, steps: int, every: int) -> list[float]:
    """Per-step losses of a dropout run with the alignment monitor every ``every`` steps (0 = off)."""
    torch.manual_seed(123 + rank)
    model = build_gpt2(gpt2_config("tiny", vocab_size=VOCAB, seq_len=SEQ, dropout=0.1), seed=0)
    engine = make_engine(ds_config(stage, gas=2, gapt={"alignment_every": every, "gate": FAST_GATE}), model=model)
    losses = []
    for s in range(steps):
        losses += train_step(engine, s, rank, gas=2)
        assert bool(engine.last_step.alignment) == (every > 0 and s % every == 0), (s, engine.last_step.alignment)
    return losses


def teardown_worker(rank: int, stage: int, tb_dir: str) -> dict:
    """Train, evaluate, then tear down as ``gapt-ds train`` does; report what is still alive afterwards."""
    import gc
    import glob
    import weakref

    from gapt_ds.distributed import shutdown_process_groups

    engine = make_engine(ds_config(stage=stage, tb_dir=f"{tb_dir}/s{stage}"))
    for step in range(2):
        train_step(engine, step, rank)
    engine.eval()
    with torch.no_grad():
        engine(input_ids=tokens(99), labels=tokens(99))
    alive = weakref.ref(engine)
    engine.destroy()
    del engine
    shutdown_process_groups()
    gc.collect()
    import threading

    native = [open(p).read().strip() for p in glob.glob("/proc/self/task/*/comm")]
    return {"engine_alive": alive() is not None, "native_threads": native,
            "python_threads": [type(t).__name__ for t in threading.enumerate()]}


def tensorboard_warning_worker(rank: int, tb_dir: str) -> dict:
    """Initialize engines without and with a tensorboard block; the warnings about it that were logged."""
    import logging

    from deepspeed.utils import logger

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        engines = [make_engine(ds_config()), make_engine(ds_config()), make_engine(ds_config(tb_dir=tb_dir))]
    finally:
        logger.removeHandler(handler)
    for engine in engines:
        engine.destroy()
    return {"warnings": [m for m in seen if "tensorboard" in m]}


class _InfGrad(torch.autograd.Function):
    """Identity forward; the gradient flowing back through it becomes inf/NaN (the loss stays finite)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def grad_skip_worker(rank: int, cases: list[tuple[int, str]], bad_step: int) -> list[dict]:
    """Rank 1 back-propagates an infinite gradient on one step while CE and MBE stay finite: every rank
    must skip that step (DeepSpeed's check or gapt-ds's own), report it, and keep the gate state."""
    results = []
    for stage, dtype in cases:
        engine = make_engine(ds_config(stage, dtype, gapt={"gate": FAST_GATE}))
        poison = {"on": False}
        engine.module.lm_head.register_forward_pre_hook(
            lambda m, args: (_InfGrad.apply(args[0]),) if poison["on"] else None)
        record = {"stage": stage, "dtype": dtype, "skipped": []}
        for step in range(bad_step + 2):
            poison["on"] = step == bad_step and rank == 1
            before = (full_params(engine), copy.deepcopy(engine.gapt_state_dict())) if step == bad_step else None
            record["skipped"].append(train_step(engine, step, rank)[0] is not None and engine.last_step.skipped)
            if before is not None:
                after = full_params(engine)
                record["unchanged"] = all(torch.equal(before[0][n], after[n]) for n in after)
                state = engine.gapt_state_dict()
                record["gate_kept"] = state["state"] == before[1]["state"]
                record["stats_finite"] = math.isfinite(engine.last_step.ce)
        record["gapt_skipped"] = engine.gapt_skipped_steps
        record["finite_after"] = all(torch.isfinite(p).all().item() for p in full_params(engine).values())
        results.append(record)
    return results


def checkpointing_worker(rank: int, cases: list[tuple[int, str]], steps: int) -> dict:
    """The same GAPT run (fast gate, alignment monitor every step) without and with activation checkpointing,
    per (ZeRO stage, MBE mode): per step the loss, CE, MBE, phases, cosines and every full gradient before the
    update."""
    from gapt_ds.models import enable_activation_checkpointing

    out = {}
    for stage, mode in cases:
        for checkpointing in (False, True):
            model = tiny_model()
            if checkpointing:
                enable_activation_checkpointing(model)
            gapt = {"gate": FAST_GATE, "mbe_weight": 2.0, "alignment_every": 1, "mbe_mode": mode}
            engine = make_engine(ds_config(stage, gapt=gapt), model=model)
            record = []
            for step in range(steps):
                x = tokens(1000 * step + rank)
                loss = engine(input_ids=x, labels=x).loss
                engine.backward(loss)
                grads = full_grads(engine)
                engine.step()
                s = engine.last_step
                record.append({"loss": loss.item(), "ce": s.ce, "mbe": s.mbe, "phase": s.phase,
                               "next_phase": s.next_phase, "alignment": s.alignment, "grads": grads})
            engine.destroy()
            out[(stage, mode, checkpointing)] = record
    return out




def compiled_alignment_worker(rank: int, cache_dir: str, every: int) -> dict:
    """Two steps with the alignment monitor every ``every`` steps (0: off) of a compiled engine (inductor, its
    cache in ``cache_dir``) and, if the monitor is on, of an eager one: the cosines of each step."""
    import os

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    out = {}
    for compiled in (True, False) if every else (True,):
        engine = make_engine(ds_config(0, gapt={"alignment_every": every, "phase": "compress"}))
        if compiled:
            engine.compile()
        out[compiled] = []
        for step in range(2):
            train_step(engine, step, rank)
            out[compiled].append(engine.last_step.alignment)
        engine.destroy()
    return out
