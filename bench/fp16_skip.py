"""The fp16 path on a GPU: GAPT's non-finite skip through DeepSpeed's loss-scaler overflow branch.

fp16 exists only on accelerators, so the CPU test suite cannot cover it. One process, a small GPT-2 in the
compression phase under fp16 with dynamic loss scaling: step ``--bad-step`` gets NaN logits. Checks that this
step is skipped (parameters bit-unchanged, ``skipped_steps`` and ``gapt_skipped_steps`` count it) and that
training goes on with finite losses. Exit status 1 if any check fails, 0 otherwise (also when skipped on CPU).

    .venv/bin/python bench/fp16_skip.py          # on a CUDA machine
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def snapshot(engine) -> dict[str, torch.Tensor]:
    """Every parameter, whole (gathered under ZeRO-3), and its fp32 master copy where the optimizer keeps one."""
    from deepspeed.utils import safe_get_full_fp32_param
    import deepspeed

    out = {}
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
            out[name] = param.detach().clone()
        master = safe_get_full_fp32_param(param)
        if master is not None:
            out[name + " (fp32 master)"] = master.detach().clone()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--bad-step", type=int, default=8, help="0-based step with NaN logits (after loss-scale warm-up)")
    p.add_argument("--stage", type=int, default=1, choices=[0, 1, 2, 3])
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("fp16_skip: no CUDA GPU (fp16 is GPU-only in DeepSpeed); skipped")
        return 0
    single = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    for key, value in single.items():
        os.environ.setdefault(key, value)
    import gapt_ds
    from gapt_ds.models import build_gpt2, gpt2_config

    model = build_gpt2(gpt2_config(vocab_size=512, seq_len=64, n_layer=4, n_embd=128, n_head=4))
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
           "fp16": {"enabled": True, "initial_scale_power": 8, "loss_scale_window": 1000},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": args.stage},
           "gapt": {"phase": "compress"}}
    engine, *_ = gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    poison = {"on": False}
    engine.module.lm_head.register_forward_hook(lambda m, a, out: out * float("nan") if poison["on"] else out)
    g = torch.Generator().manual_seed(0)
    failures, losses = [], []
    for step in range(args.steps):
        x = torch.randint(0, 512, (4, 64), generator=g).to(engine.device)
        poison["on"] = step == args.bad_step
        before = snapshot(engine) if poison["on"] else None
        ds_skipped, gapt_skipped = engine.skipped_steps, engine.gapt_skipped_steps
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
        if before is not None:
            after = snapshot(engine)
            changed = [f"{n} (max |diff| {(after[n].float() - v.float()).abs().max():.3g})" for n, v in before.items()
                       if not torch.equal(v, after[n])]
            if changed:
                failures.append(f"{len(changed)} of {len(before)} tensors changed on the poisoned step: "
                                + ", ".join(changed[:4]))
            if engine.skipped_steps != ds_skipped + 1 or engine.gapt_skipped_steps != gapt_skipped + 1:
                failures.append(f"skip not counted: skipped_steps {ds_skipped}->{engine.skipped_steps}, "
                                f"gapt_skipped_steps {gapt_skipped}->{engine.gapt_skipped_steps}")
            if not engine.last_step.skipped:
                failures.append("last_step.skipped is False on the poisoned step")
    after = [v for i, v in enumerate(losses) if i > args.bad_step]
    if not all(torch.isfinite(torch.tensor(after))):
        failures.append(f"non-finite losses after the skip: {after}")
    print(f"fp16 ZeRO-{args.stage}: losses {[round(v, 3) for v in losses]}; DeepSpeed skipped_steps "
          f"{engine.skipped_steps} (loss-scale warm-up included), gapt_skipped_steps {engine.gapt_skipped_steps}")
    print("fp16_skip: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
    engine.destroy()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
