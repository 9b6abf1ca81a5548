"""Pretrain a GPT-2 with GAPT under DeepSpeed: the script every launcher runs.

    # one node, 2 ranks (GPUs; on a CPU-only machine add DS_ACCELERATOR=cpu OMP_NUM_THREADS=1):
    deepspeed --num_gpus 2 --module gapt_ds.train --deepspeed_config ds_configs/cpu_default.json \\
        --data arithmetic --tokenizer char --model tiny --seq-len 64 --steps 400 --run-dir runs/demo
    # torchrun, or a single process (no launcher):
    torchrun --nproc_per_node 2 -m gapt_ds.train --deepspeed_config ... ;   gapt-ds train --deepspeed_config ...
    # resume the run in --run-dir from its latest checkpoint (exact: same losses as without the stop):
    ... --resume
    # ... also on another number of ranks, with the same global batch (micro-batch x accumulation x ranks):
    torchrun --nproc_per_node 1 -m gapt_ds.train ... --resume   # + a config with twice the micro-batch

Run directory: ``ds_config.json`` (the resolved config), ``args.json``, ``metrics.jsonl`` (one JSON line per
optimizer step and per evaluation, rank 0), ``tensorboard/`` (DeepSpeed monitor events), ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from gapt_ds import resume, rundir, runtime
from gapt_ds.config import GaptConfig, load_json
from gapt_ds.data import arithmetic
from gapt_ds.data.tokenize_pool import default_workers
from gapt_ds.ds_config_check import check_ds_config
from gapt_ds.metrics import MetricsWriter
from gapt_ds.models import PRESETS, gpt2_config
from gapt_ds.preemption import StopOnSignal
from gapt_ds.skip import check_divergence
from gapt_ds.timeouts import collective_context

# torch, DeepSpeed and what needs them are imported inside the functions: `gapt-ds train --help` stays fast
if TYPE_CHECKING:
    from gapt_ds.evaluate import Evaluator

def build_parser() -> argparse.ArgumentParser:
    """The ``gapt-ds train`` options; their help texts are the documentation (README.md is checked against them)."""
    p = argparse.ArgumentParser(prog="gapt-ds train", description="Pretrain GPT-2 with GAPT under DeepSpeed.",
                                formatter_class=runtime.HelpFormatter)
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", required=True,
                   help="DeepSpeed JSON with an optional `\"gapt\"` block. If it has no `tensorboard` section, one is "
                        "added that writes to `RUN_DIR/tensorboard`")
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                   help="set by the deepspeed launcher")
    p.add_argument("--deepspeed", action="store_true", help="accepted for DeepSpeed compatibility (implied)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="arithmetic", help="`hf:NAME[:CONFIG]` (hub, streamed), a local glob of `.txt` / "
                   "`.jsonl` / `.parquet` files (comma-separated globs allowed; the `text` column), or `arithmetic`")
    d.add_argument("--tokenizer", default="char", help="`char` (the arithmetic alphabet), a SentencePiece `.model`, "
                   "or a directory with GPT-2 `vocab.json` + `merges.txt`")
    d.add_argument("--seq-len", type=int, default=64, help="tokens per packed training sequence (a multiple of "
                   "`patch_size`)")
    d.add_argument("--max-tokens", type=int, default=None,
                   help="stop tokenizing after this many training tokens (needed for streamed hub data)")
    d.add_argument("--val-every", type=int, default=50, help="every N-th document goes to the validation split")
    d.add_argument("--cache-dir", default=None, help="token cache root (none: `$GAPT_DS_CACHE` or `~/.cache/gapt-ds`)")
    d.add_argument("--tokenize-workers", type=int, default=None,
                   help="processes that tokenize the source when the cache is built (none: min(4, CPUs)); "
                   "the cache is byte-identical for any number")
    _add_model_arguments(p)
    t = p.add_argument_group("run")
    t.add_argument("--run-dir", default="runs/default", help="where everything of the run goes")
    t.add_argument("--steps", type=int, default=300, help="optimizer steps in total")
    t.add_argument("--eval-every", type=int, default=50, help="validation period in steps (0: only at the end)")
    t.add_argument("--eval-batches", type=int, default=8, help="validation micro-batches per rank")
    t.add_argument("--arith-eval", type=int, default=256, help="arithmetic ID/OOD problems per evaluation (0: off)")
    t.add_argument("--save-every", type=int, default=100, help="checkpoint period in steps (0: only at the end)")
    t.add_argument("--keep-last", type=int, default=0, help="keep only the newest K complete checkpoints (0: keep all)")
    t.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint of `--run-dir`")
    t.add_argument("--allow-config-change", action="store_true", help="with `--resume`: accept a changed DeepSpeed "
                   "config or arguments (logged); see \"Failure behaviour\"")
    t.add_argument("--overwrite", action="store_true", help="delete the previous run in `--run-dir` (its checkpoints, "
                   "metrics, TensorBoard files) and start again")
    t.add_argument("--seed", type=int, default=0, help="model init, data order and per-rank RNG")
    t.add_argument("--no-progress", action="store_true",
                   help="no per-step output (rank 0 shows step, CE, MBE, phase, tokens/s: a bar on a terminal, "
                        "a line every 30 s in a log file); evaluation lines are always printed")
    t.add_argument("--max-skipped-steps", type=int, default=50,
                   help="stop with exit code 1, saving nothing, after this many optimizer steps in a row were skipped "
                        "(non-finite loss or gradients); 0: never. fp16's loss-scale search skips a few steps "
                        "at the start")
    t.add_argument("--dist-timeout", type=float, default=10.0,
                   help="minutes a collective may wait for the other ranks, then it fails naming the collective and "
                        "step (fractions allowed; every process group, DeepSpeed's included). Rank 0 tokenizes a new "
                        "corpus while the others wait at a barrier: keep it above that time")
    t.add_argument("--recipe", default=None, help="the recipe this run belongs to, recorded in `args.json` for "
                   "`gapt-ds report` (set by `gapt-ds recipe`)")
    arithmetic.add_arguments(p)
    return p


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", default="tiny", help="preset: " + ", ".join(
        f"`{name}` ({cfg['n_layer']}×{cfg['n_embd']})" for name, cfg in PRESETS.items()))
    m.add_argument("--model-config", default=None, help="a GPT2Config JSON file instead of a preset")
    m.add_argument("--init-from", default=None, help="start from a local Hugging Face GPT-2 directory (no hub access)")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout of embeddings, attention and residuals")
    m.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each transformer block's activations in backward instead of keeping them "
                        "(Hugging Face, non-reentrant): less memory, about one more forward of compute per step; "
                        "losses and gradients unchanged")
    m.add_argument("--compile", action="store_true",
                   help="`torch.compile` the model (DeepSpeed's `engine.compile()`, inductor backend); the first "
                        "steps and the first evaluation wait for compilation. See \"Memory and compile\"")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse and validate; every problem is reported at once."""
    args = build_parser().parse_args(argv)
    problems = []
    if args.tokenize_workers is None:
        args.tokenize_workers = default_workers()
    for name in ("seq_len", "steps", "eval_batches", "val_every", "tokenize_workers"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.val_every == 1:
        problems.append("--val-every 1 would put every document in the validation split; use 2 or more")
    if not args.dist_timeout > 0:
        problems.append(f"--dist-timeout must be > 0 minutes, got {args.dist_timeout}")
    for name in ("eval_every", "save_every", "arith_eval", "keep_last", "max_skipped_steps"):
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
    ckpt_dir = Path(args.run_dir) / "checkpoints"
    if args.resume and not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
        problems.append(f"--resume: no checkpoint in {ckpt_dir}")
    if args.resume and args.overwrite:
        problems.append("--resume and --overwrite exclude each other")
    problems += arithmetic.check_args(args)
    if problems:
        raise ValueError("invalid arguments:\n  " + "\n  ".join(problems))
    return args


def resolve_ds_config(args: argparse.Namespace) -> tuple[dict, GaptConfig]:
    """The user's DeepSpeed JSON, validated, with TensorBoard pointed into the run directory if unset."""
    from gapt_ds.algorithms import algorithm_class
    from gapt_ds.optim import resolve_optimizer

    cfg = load_json(args.deepspeed_config)
    gapt = GaptConfig.from_ds_config(cfg, source=args.deepspeed_config)
    algorithm_class(gapt.algorithm)  # an unknown algorithm fails before any work
    check_ds_config(cfg, source=args.deepspeed_config)  # DeepSpeed's own keys, before DeepSpeed starts
    if isinstance(cfg.get("optimizer"), dict):
        resolve_optimizer(str(cfg["optimizer"].get("type", "")))  # an unknown name fails before any work
    if "train_micro_batch_size_per_gpu" not in cfg:
        raise ValueError(f"{args.deepspeed_config}: set train_micro_batch_size_per_gpu (the per-rank micro-batch)")
    if isinstance(cfg.get("checkpoint"), dict) and "load_universal" in cfg["checkpoint"]:
        raise ValueError(f"{args.deepspeed_config}: remove checkpoint.load_universal: gapt-ds sets it itself when "
                         "--resume continues on another world size")
    if gapt.patch_size > args.seq_len or (args.seq_len % gapt.patch_size and gapt.patch_tail == "error"):
        raise ValueError(f"--seq-len {args.seq_len} does not split into MBE windows of gapt.patch_size="
                         f"{gapt.patch_size}; use a multiple of it (or \"patch_tail\": \"drop\")")
    tb = cfg.setdefault("tensorboard", {"enabled": True})
    if tb.get("enabled") and "output_path" not in tb:
        tb.update(output_path=str(Path(args.run_dir)), job_name="tensorboard")
    return cfg, gapt


def main(argv: Optional[list[str]] = None) -> dict:
    with runtime.same_on_every_rank():  # printed once, by rank 0
        args = parse_args(argv)
        ds_cfg, _ = resolve_ds_config(args)
    from gapt_ds import distributed  # torch: only once the arguments are known to be good

    with runtime.process_group(timeout_minutes=args.dist_timeout):
        # rank 0 locks the run directory and applies its rules before anything is written (rundir.py)
        lock = distributed.rank0_decides(lambda: rundir.admit(Path(args.run_dir), args.resume, args.overwrite))
        try:
            return _run(args, ds_cfg)
        finally:
            if lock is not None:
                lock.release()


@dataclass
class Trainer:
    """Everything the training loop touches, built by ``_setup``."""

    args: argparse.Namespace
    engine: Any
    batches: Any
    evaluator: Evaluator
    log: MetricsWriter
    fingerprint: dict
    settings: dict
    rank: int
    world: int
    layout: tuple[int, int]  # (world size, micro-batch) the data order is laid out with (batches.py)
    step: int = 0
    sequences: int = 0  # consumed by all ranks together: the data position
    progress: Any = None  # rank 0's Progress

    @property
    def run_dir(self) -> Path:
        return Path(self.args.run_dir)

    def close(self) -> None:
        self.log.close()
        if self.progress is not None:
            self.progress.close()


def _run(args: argparse.Namespace, ds_cfg: dict) -> dict:
    """Everything after the process group exists: data, engine, set-up, the training loop, the summary."""
    from gapt_ds import distributed

    rank, world = distributed.rank(), distributed.world_size()
    tokenizer, cache = _load_data(args)
    model_cfg = gpt2_config(args.model, vocab_size=tokenizer.vocab_size, seq_len=args.seq_len, dropout=args.dropout,
                            config_json=args.model_config)
    fingerprint = run_fingerprint(args, cache.meta, model_cfg, world, *batch_shape(ds_cfg, world))
    settings = resume.settings(ds_cfg, vars(args))
    resumed = None
    if args.resume:  # nothing in the run directory changes before this check passes
        with collective_context("resume admission (rank 0 checks the checkpoint, converts it for a new world size)"):
            resumed = distributed.rank0_decides(lambda: resume.admit(
                Path(args.run_dir) / "checkpoints", fingerprint, settings, args.allow_config_change), share=True)
    runtime.write_run_meta(Path(args.run_dir), ds_cfg, vars(args))
    engine = _build_engine(args, ds_cfg, model_cfg, tokenizer.vocab_size, universal=bool(resumed and resumed.universal))
    try:
        with runtime.same_on_every_rank():
            cache.check_vocab(engine.module.config.vocab_size)
        trainer = _setup(args, engine, cache, tokenizer, fingerprint, settings, resumed)
        try:
            summary = _train(trainer)
        finally:
            trainer.close()
    finally:
        engine.destroy()  # before the process groups go: see GaptEngineMixin.destroy
    if rank == 0:
        (trainer.run_dir / "summary.json").write_text(
            json.dumps({"step": trainer.step, "world_size": trainer.world, **summary}, indent=2))
    return summary


def _load_data(args: argparse.Namespace):
    """The tokenizer and the token cache (built once per filesystem, then opened by every rank)."""
    from gapt_ds.data.cache_sync import prepare_cache
    from gapt_ds.data.tokenizers import load_tokenizer

    with runtime.same_on_every_rank():
        tokenizer = load_tokenizer(args.tokenizer)
    cache_dir = args.cache_dir or os.environ.get("GAPT_DS_CACHE") or str(Path.home() / ".cache" / "gapt-ds")
    task = arithmetic.task_from_args(args)
    data = task.data_spec() if task else args.data  # the task's options name its training text
    with collective_context("token-cache build (waiting for the rank that tokenizes)"):
        cache = prepare_cache(data, tokenizer, cache_dir, show_progress=not args.no_progress,
                              workers=args.tokenize_workers, max_tokens=args.max_tokens, val_every=args.val_every,
                              seed=args.seed)
    return tokenizer, cache


def batch_shape(cfg: dict, world: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) as DeepSpeed derives them from the config."""
    micro = int(cfg["train_micro_batch_size_per_gpu"])
    if "gradient_accumulation_steps" in cfg:
        return micro, int(cfg["gradient_accumulation_steps"])
    return micro, (int(cfg["train_batch_size"]) // (micro * world) if "train_batch_size" in cfg else 1)


def run_fingerprint(args: argparse.Namespace, cache_meta: dict, model_cfg, world: int, micro: int, gas: int) -> dict:
    """The settings a checkpoint can only be resumed with (data position, RNG states and weights depend on them)."""
    return {"data": cache_meta["source"], "tokenizer": cache_meta["tokenizer"], "seq_len": args.seq_len,
            "world_size": world, "micro_batch": micro, "grad_accum": gas, "seed": args.seed,
            "model": model_cfg.to_json_string(use_diff=True) if args.init_from is None else args.init_from}


def _build_engine(args: argparse.Namespace, ds_cfg: dict, model_cfg, vocab_size: int, universal: bool = False):
    """The GPT-2 (checked against the tokenizer and context) inside a GAPT DeepSpeed engine; ``universal``:
    one that loads DeepSpeed's universal checkpoint form (a resume on another world size)."""
    import gapt_ds
    from gapt_ds.models import build_gpt2, enable_activation_checkpointing
    from gapt_ds.optim import build_optimizer, muon_grouping

    if args.compile:
        check_compile_toolchain()
    model = build_gpt2(model_cfg, seed=args.seed, init_from=args.init_from)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"tokenizer/vocab mismatch: the tokenizer has {vocab_size} tokens, "
                         f"the model's vocabulary only {model.config.vocab_size}")
    if model.config.n_positions < args.seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's context n_positions={model.config.n_positions}")
    optimizer, params, engine_cfg = build_optimizer(model, ds_cfg)  # DeepSpeed's names, torch.optim, plugins
    if universal:
        engine_cfg = {**engine_cfg, "checkpoint": {**engine_cfg.get("checkpoint", {}), "load_universal": True}}
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    with muon_grouping(model, engine_cfg):
        engine, _, _, _ = gapt_ds.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                             config=engine_cfg)
    if args.compile:
        engine.compile()  # DeepSpeed's: torch.compile (inductor) of the module, in place
    return engine


def check_compile_toolchain() -> None:
    """On CPU, torch.compile's inductor builds C++ kernels: refuse ``--compile`` without a C++ compiler."""
    from gapt_ds.deepspeed_compat import on_cpu

    if on_cpu() and cpu_compiler() is None:
        raise ValueError("--compile on CPU: torch.compile's inductor backend builds C++ kernels, and no C++ compiler "
                         "was found (set CXX, or install g++); run without --compile")


def cpu_compiler() -> Optional[str]:
    """The C++ compiler inductor would use for CPU kernels (``$CXX``, else g++/c++/clang++), or None."""
    import shutil

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for path in map(shutil.which, names) if path), None)


def _setup(args: argparse.Namespace, engine, cache, tokenizer, fingerprint: dict, settings: dict,
           resumed: Optional[resume.Admitted]) -> Trainer:
    """RNG, the resume (``resumed``: what ``resume.admit`` accepted), batches, evaluator and metrics around
    the engine."""
    from gapt_ds import checkpoint, distributed
    from gapt_ds.evaluate import Evaluator
    from gapt_ds.rng import seed_everything

    rank, world = distributed.rank(), distributed.world_size()
    run_dir = Path(args.run_dir)
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    assert (micro, gas) == (fingerprint["micro_batch"], fingerprint["grad_accum"])  # batch_shape is DeepSpeed's rule
    seed_everything(args.seed * 1000 + rank)  # dropout etc.: distinct per rank, reproducible
    step, sequences, layout = 0, 0, (world, micro)
    if resumed is not None:
        state = checkpoint.load(engine, run_dir / "checkpoints" / resumed.tag, universal=resumed.universal)
        step, (sequences, layout) = state["step"], checkpoint.data_position(state)
    task = arithmetic.task_from_args(args)
    val_needed = micro * world * args.seq_len
    if rank == 0 and len(cache.split("val")) < val_needed:
        warnings.warn(f"the validation split has {len(cache.split('val'))} tokens, fewer than one micro-batch on every "
                      f"rank ({val_needed}): no validation CE will be logged; lower --val-every for more")
    arith = args.arith_eval if task else 0
    evaluator = Evaluator(engine, cache.split("val"), tokenizer, args.seq_len, args.eval_batches, arith, args.seed,
                          rank, world, task=task)
    log = MetricsWriter(engine.monitor, rank, jsonl=run_dir / "metrics.jsonl")
    batches = _batches(args, task, cache, tokenizer, micro, rank, world, layout)
    trainer = Trainer(args, engine, batches, evaluator, log, fingerprint,
                      settings, rank, world, layout, step, sequences)
    if resumed is not None:
        moved = {"from_layout": list(resumed.saved_layout), "universal": resumed.universal} \
            if resumed.saved_layout else {}
        trainer.log.record(event="resume", step=step, tag=resumed.tag, sequences=sequences, **moved)
        if resumed.changes:
            trainer.log.record(event="config_change", step=step, changes=resumed.changes)
    if rank == 0:
        from gapt_ds.progress import Progress

        trainer.progress = Progress(args.steps, trainer.step, steps=not args.no_progress)
    return trainer


def _batches(args: argparse.Namespace, task, cache, tokenizer, micro: int, rank: int, world: int,
             layout: tuple[int, int]):
    """The training data: position = sequences consumed, laid out by ``layout`` (the run's first world size
    and micro-batch), so that any split of the same global batch reads the same sequences per step."""
    from gapt_ds.data.batches import PackedBatches

    if task and task.per_problem:
        return arithmetic.ProblemBatches(task, tokenizer, args.seq_len, micro, rank, world, args.seed, layout)
    return PackedBatches(cache.split("train"), args.seq_len, micro, rank, world, args.seed, layout)


def _train(t: Trainer) -> dict:
    """The loop: optimizer steps until ``--steps``, with evaluations and checkpoints on their periods.
    It stops early on divergence (nothing saved) or on SIGTERM/SIGINT (after a checkpoint)."""
    from gapt_ds import checkpoint

    args, summary = t.args, {}
    stop = StopOnSignal(t.engine.request_stop)
    with stop.installed():
        while t.step < args.steps:
            _optimizer_step(t)
            check_divergence(t.engine.gapt_consecutive_skips, args.max_skipped_steps, t.step)
            last = t.step == args.steps
            stopping = t.engine.last_step.stop and not last  # all-reduced: the same on every rank
            if not stopping and (last or (args.eval_every and t.step % args.eval_every == 0)):
                with collective_context("evaluation", t.step):
                    summary = _evaluate(t)
            if last or stopping or (args.save_every and t.step % args.save_every == 0):
                with collective_context("checkpoint save", t.step):
                    checkpoint.save(t.engine, t.run_dir / "checkpoints", t.step,
                                    {"sequences": t.sequences, "data_layout": list(t.layout)}, t.fingerprint,
                                    t.settings, args.keep_last)
            if stopping:
                raise stop.stopped(t.step, t.run_dir / "checkpoints")
    return summary


def _optimizer_step(t: Trainer) -> None:
    """One optimizer step (``gradient_accumulation_steps`` micro-batches), logged."""
    engine = t.engine
    t0 = time.perf_counter()
    for _ in range(engine.gradient_accumulation_steps()):
        x = t.batches.batch_at(t.sequences)
        x, labels = x if isinstance(x, tuple) else (x, x)  # per-problem arithmetic masks the labels
        _micro_step(engine, x.to(engine.device), labels.to(engine.device), t.step + 1)
        t.sequences += t.world * engine.train_micro_batch_size_per_gpu()
    t.step += 1
    s = engine.last_step
    tokens = engine.gradient_accumulation_steps() * t.world * engine.train_micro_batch_size_per_gpu() * t.args.seq_len
    tok_s = tokens / (time.perf_counter() - t0)
    t.log.record(step=t.step, ce=s.ce, mbe=s.mbe, mbe_mean=s.mbe_mean, phase=s.phase, next_phase=s.next_phase,
                 mbe_weights=s.mbe_weights, lr=engine.get_lr()[0], skipped=s.skipped, tokens_per_s=tok_s,
                 sequences=t.sequences)
    if t.progress is not None:
        t.progress.step(t.step, ce=f"{s.ce:.3f}", mbe=f"{s.mbe_mean:.3f}", phase="MC"[s.phase - 1],
                        tok_s=f"{tok_s:,.0f}")


def _micro_step(engine, x, labels, step: int) -> None:
    """Forward, backward and ``engine.step()`` of one micro-batch; a collective timeout names the part."""
    with collective_context("forward", step):  # no KV cache in training (under --compile: no warning, no graph break)
        out = engine(input_ids=x, labels=labels, use_cache=False)
    with collective_context("backward (DeepSpeed's gradient reduction)", step):
        engine.backward(out.loss)
    with collective_context("DeepSpeed optimizer step", step):
        engine.step()


def _evaluate(t: Trainer) -> dict:
    summary = t.evaluator.run()
    t.log.evaluation(summary, t.step)
    if t.progress is not None:
        t.progress.write(f"step {t.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    runtime.run_entry(lambda: runtime.run_main("gapt-ds train", main))
