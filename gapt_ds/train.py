"""Pretrain a GPT-2 with GAPT under DeepSpeed: the script every launcher runs.

    # one node, 2 ranks (GPUs; on a CPU-only machine add DS_ACCELERATOR=cpu OMP_NUM_THREADS=1):
    deepspeed --num_gpus 2 --module gapt_ds.train --deepspeed_config ds_configs/cpu_default.json \\
        --data arithmetic --tokenizer char --model tiny --seq-len 64 --steps 400 --run-dir runs/demo
    # torchrun, or a single process (no launcher):
    torchrun --nproc_per_node 2 -m gapt_ds.train --deepspeed_config ... ;   gapt-ds train --deepspeed_config ...
    # resume the run in --run-dir from its latest checkpoint (exact: same losses as without the stop):
    ... --resume

Run directory: ``ds_config.json`` (the resolved config), ``args.json``, ``metrics.jsonl`` (one JSON line per
optimizer step and per evaluation, rank 0), ``tensorboard/`` (DeepSpeed monitor events), ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional

import torch

from gapt_ds.algorithms import algorithm_class
from gapt_ds.config import GaptConfig, load_json
from gapt_ds.models import PRESETS
from gapt_ds.optim import build_optimizer, muon_grouping, resolve_optimizer

ARITH_EVAL_SETS = {"id": (1, 3), "ood": (4, 6)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gapt-ds train", description="Pretrain GPT-2 with GAPT under DeepSpeed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", required=True,
                   help="DeepSpeed JSON config (with an optional \"gapt\" block)")
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                   help="set by the deepspeed launcher")
    p.add_argument("--deepspeed", action="store_true", help="accepted for DeepSpeed compatibility (implied)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="arithmetic", help="hf:NAME[:CONFIG] | local glob (*.txt/*.jsonl/*.parquet) | arithmetic")
    d.add_argument("--tokenizer", default="char", help="char | SentencePiece .model file | GPT-2 BPE dir (vocab.json+merges.txt)")
    d.add_argument("--seq-len", type=int, default=64, help="tokens per training sequence")
    d.add_argument("--max-tokens", type=int, default=None, help="stop tokenizing after this many training tokens")
    d.add_argument("--val-every", type=int, default=50, help="every N-th document goes to the validation split")
    d.add_argument("--cache-dir", default=None, help="token cache directory (default: $GAPT_DS_CACHE or ~/.cache/gapt-ds)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="tiny", help=f"preset: {', '.join(PRESETS)}")
    m.add_argument("--model-config", default=None, help="GPT2Config JSON file (overrides --model)")
    m.add_argument("--init-from", default=None, help="local Hugging Face GPT-2 directory to start from")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout of embeddings, attention and residuals")
    t = p.add_argument_group("run")
    t.add_argument("--run-dir", default="runs/default", help="where logs, metrics and checkpoints go")
    t.add_argument("--steps", type=int, default=300, help="optimizer steps in total")
    t.add_argument("--eval-every", type=int, default=50, help="validation period in steps (0: only at the end)")
    t.add_argument("--eval-batches", type=int, default=8, help="validation micro-batches per rank")
    t.add_argument("--arith-eval", type=int, default=256, help="arithmetic ID/OOD problems per evaluation (0: off)")
    t.add_argument("--save-every", type=int, default=100, help="checkpoint period in steps (0: only at the end)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --run-dir")
    t.add_argument("--seed", type=int, default=0, help="model init, data order and per-rank RNG")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse and validate; every problem is reported at once."""
    args = build_parser().parse_args(argv)
    problems = []
    for name in ("seq_len", "steps", "eval_batches", "val_every"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("eval_every", "save_every", "arith_eval"):
        if getattr(args, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_tokens is not None and args.max_tokens < 1:
        problems.append(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if not 0.0 <= args.dropout < 1.0:
        problems.append(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.model_config is None and args.model not in PRESETS:
        problems.append(f"--model {args.model!r} is not a preset ({', '.join(PRESETS)})")
    for name in ("model_config", "deepspeed_config"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            problems.append(f"--{name.replace('_', '-')}: file not found: {path}")
    if args.init_from is not None and not (Path(args.init_from) / "config.json").is_file():
        problems.append(f"--init-from {args.init_from}: not a Hugging Face model directory (no config.json)")
    if args.resume and not (Path(args.run_dir) / "checkpoints" / "latest").is_file():
        problems.append(f"--resume: no checkpoint in {Path(args.run_dir) / 'checkpoints'}")
    if problems:
        raise ValueError("invalid arguments:\n  " + "\n  ".join(problems))
    return args


def resolve_ds_config(args: argparse.Namespace) -> tuple[dict, GaptConfig]:
    """The user's DeepSpeed JSON, validated, with TensorBoard pointed into the run directory if unset."""
    cfg = load_json(args.deepspeed_config)
    gapt = GaptConfig.from_ds_config(cfg, source=args.deepspeed_config)
    algorithm_class(gapt.algorithm)  # an unknown algorithm fails before any work
    if isinstance(cfg.get("optimizer"), dict):
        resolve_optimizer(str(cfg["optimizer"].get("type", "")))  # an unknown name fails before any work
    if "train_micro_batch_size_per_gpu" not in cfg:
        raise ValueError(f"{args.deepspeed_config}: set train_micro_batch_size_per_gpu (the per-rank micro-batch)")
    if gapt.patch_size > args.seq_len or (args.seq_len % gapt.patch_size and gapt.patch_tail == "error"):
        raise ValueError(f"--seq-len {args.seq_len} does not split into MBE windows of gapt.patch_size="
                         f"{gapt.patch_size}; use a multiple of it (or \"patch_tail\": \"drop\")")
    tb = cfg.setdefault("tensorboard", {"enabled": True})
    if tb.get("enabled") and "output_path" not in tb:
        tb.update(output_path=str(Path(args.run_dir)), job_name="tensorboard")
    return cfg, gapt


class MetricsLog:
    """``metrics.jsonl`` in the run directory, written by rank 0."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.file = open(path, "a") if enabled else None

    def write(self, **record) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    ds_cfg, _ = resolve_ds_config(args)
    import deepspeed
    import torch.distributed as dist

    from gapt_ds.distributed import shutdown_process_groups, skip_cpu_shm_build

    if os.environ.get("DS_ACCELERATOR") == "cpu":
        skip_cpu_shm_build()
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")  # DeepSpeed's own call, not ours
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29500")
    deepspeed.init_distributed()
    try:
        summary = _run(args, ds_cfg)
        dist.barrier()
        return summary
    except BaseException as err:  # its frames would keep the engine, and so the process groups, alive
        traceback.clear_frames(err.__traceback__)
        raise
    finally:
        shutdown_process_groups()


def _run(args: argparse.Namespace, ds_cfg: dict) -> dict:
    """Everything after the process group exists: data, model, engine, the training loop."""
    import torch.distributed as dist

    import gapt_ds
    from gapt_ds import checkpoint
    from gapt_ds.data.batches import PackedBatches
    from gapt_ds.data.cache import build_cache
    from gapt_ds.data.tokenizers import load_tokenizer
    from gapt_ds.models import build_gpt2, gpt2_config

    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = Path(args.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "ds_config.json").write_text(json.dumps(ds_cfg, indent=2))
        (run_dir / "args.json").write_text(json.dumps(vars(args), indent=2))

    tokenizer = load_tokenizer(args.tokenizer)
    cache_dir = args.cache_dir or os.environ.get("GAPT_DS_CACHE") or str(Path.home() / ".cache" / "gapt-ds")
    if rank == 0:
        build_cache(args.data, tokenizer, cache_dir, args.max_tokens, args.val_every, args.seed,
                    show_progress=not args.no_progress)
    dist.barrier()
    cache = build_cache(args.data, tokenizer, cache_dir, args.max_tokens, args.val_every, args.seed, show_progress=False)

    model_cfg = gpt2_config(args.model, vocab_size=tokenizer.vocab_size, seq_len=args.seq_len, dropout=args.dropout,
                            config_json=args.model_config)
    model = build_gpt2(model_cfg, seed=args.seed, init_from=args.init_from)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"tokenizer/vocab mismatch: the tokenizer has {tokenizer.vocab_size} tokens, "
                         f"the model's vocabulary only {model.config.vocab_size}")
    if model.config.n_positions < args.seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's context n_positions={model.config.n_positions}")
    optimizer, params, engine_cfg = build_optimizer(model, ds_cfg)  # DeepSpeed's names, torch.optim, plugins
    with muon_grouping(model, engine_cfg):
        engine, _, _, _ = gapt_ds.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                             config=engine_cfg)
    del model, optimizer, params
    try:
        return _train(args, engine, cache, tokenizer, model_cfg, run_dir)
    finally:
        engine.destroy()  # before the process group goes: see GAPTEngine.destroy


def _train(args: argparse.Namespace, engine, cache, tokenizer, model_cfg, run_dir: Path) -> dict:
    """The training loop with evaluation and checkpoints; returns the final evaluation."""
    import torch.distributed as dist

    from gapt_ds import checkpoint
    from gapt_ds.data.batches import PackedBatches

    rank, world = dist.get_rank(), dist.get_world_size()
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    batches = PackedBatches(cache.split("train"), args.seq_len, micro, rank, world, seed=args.seed)
    val_needed = micro * world * args.seq_len
    if rank == 0 and len(cache.split("val")) < val_needed:
        warnings.warn(f"the validation split has {len(cache.split('val'))} tokens, fewer than one micro-batch on every "
                      f"rank ({val_needed}): no validation CE will be logged; lower --val-every for more")

    fingerprint = {"data": cache.meta["source"], "tokenizer": cache.meta["tokenizer"], "seq_len": args.seq_len,
                   "world_size": world, "micro_batch": micro, "grad_accum": gas, "seed": args.seed,
                   "model": model_cfg.to_json_string(use_diff=True) if args.init_from is None else args.init_from}
    checkpoint.seed_everything(args.seed * 1000 + rank)  # dropout etc.: distinct per rank, reproducible
    ckpt_dir = run_dir / "checkpoints"
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=rank == 0)
    step, micro_batches = 0, 0
    if args.resume:
        state = checkpoint.load(engine, ckpt_dir, fingerprint)
        step, micro_batches = state["step"], state["micro_batches"]
        log.write(event="resume", step=step)

    tokens_per_step = gas * world * micro * args.seq_len
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=step, desc="gapt-ds", unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 10.0)
    evaluator = Evaluator(engine, cache, tokenizer, args, rank, world)
    summary: dict = {}
    while step < args.steps:
        t0 = time.perf_counter()
        for _ in range(gas):
            x = batches.micro_batch_at(micro_batches).to(engine.device)
            micro_batches += 1
            out = engine(input_ids=x, labels=x)
            engine.backward(out.loss)
            engine.step()
        step += 1
        s = engine.last_step
        tok_s = tokens_per_step / (time.perf_counter() - t0)
        log.write(step=step, ce=s.ce, mbe=s.mbe, mbe_mean=s.mbe_mean, phase=s.phase, next_phase=s.next_phase,
                  lr=engine.get_lr()[0], skipped=s.skipped, tokens_per_s=tok_s)
        if bar is not None:
            bar.set_postfix(ce=f"{s.ce:.3f}", mbe=f"{s.mbe_mean:.3f}", phase="MC"[s.phase - 1], tok_s=f"{tok_s:,.0f}")
            bar.update(1)
        last = step == args.steps
        if last or (args.eval_every and step % args.eval_every == 0):
            summary = evaluator.run(step)
            log.write(step=step, event="eval", **summary)
            if bar is not None:
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
        if last or (args.save_every and step % args.save_every == 0):
            checkpoint.save(engine, ckpt_dir, step, micro_batches, fingerprint)
    if bar is not None:
        bar.close()
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps({"step": step, "world_size": world, **summary}, indent=2))
    return summary


class Evaluator:
    """Validation CE/MBE on the held-out split, plus answer-only CE and exact match for arithmetic."""

    def __init__(self, engine, cache, tokenizer, args, rank: int, world: int) -> None:
        self.engine, self.cache, self.tok, self.args = engine, cache, tokenizer, args
        self.rank, self.world = rank, world

    def _sum(self, sums: list[float]) -> list[float]:
        from gapt_ds.distributed import all_reduce_sum

        return all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=self.engine.device)).tolist()

    @torch.no_grad()
    def run(self, step: int) -> dict:
        from gapt_ds.data.batches import eval_batches

        engine = self.engine
        engine.eval()
        ce = mbe = 0.0
        n = 0
        for x in eval_batches(self.cache.split("val"), self.args.seq_len, engine.train_micro_batch_size_per_gpu(),
                              self.rank, self.world, self.args.eval_batches):
            engine(input_ids=x.to(engine.device), labels=x.to(engine.device))
            ce += engine.last_micro.ce.item()
            mbe += sum(m.item() for m in engine.last_micro.mbe) / max(1, len(engine.last_micro.mbe))
            n += 1
        ce, mbe, n = self._sum([ce, mbe, n])
        result = {"val_ce": ce / n, "val_mbe": mbe / n} if n else {}
        if self.args.data == "arithmetic" and self.args.arith_eval:
            result.update(self._arithmetic())
        engine.train()
        events = [(f"eval/{k}", v, step) for k, v in result.items()]
        if engine.monitor.enabled and self.rank == 0:
            engine.monitor.write_events(events)
        return result

    def _arithmetic(self) -> dict:
        from gapt_ds.data.arithmetic import answer_batch, answer_metrics, eval_examples

        out = {}
        per_rank = self.args.arith_eval // self.world
        for name, digits in ARITH_EVAL_SETS.items():
            examples = eval_examples(digits, per_rank * self.world, seed=self.args.seed)[self.rank :: self.world]
            sums = [0.0, 0.0, 0.0]
            for i in range(0, len(examples), 64):
                inputs, labels = answer_batch(examples[i : i + 64], self.tok)
                logits = self.engine(input_ids=inputs.to(self.engine.device),
                                     labels=labels.to(self.engine.device)).logits
                for j, v in enumerate(answer_metrics(logits, labels.to(logits.device))):
                    sums[j] += float(v)
            ce_sum, count, exact = self._sum(sums)
            out[f"{name}_answer_ce"] = ce_sum / max(count, 1)
            out[f"{name}_exact_match"] = exact / max(per_rank * self.world, 1)
        return out


if __name__ == "__main__":
    from gapt_ds.runtime import run_main

    sys.exit(run_main("gapt-ds train", main))
