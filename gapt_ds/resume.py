"""``--resume`` admission: the checkpoint's settings against this run's, before anything is loaded or written.

Fixed settings (data, tokenizer, sequence length, seed, model) can never change: the data and the weights
depend on them. The world size, micro-batch and accumulation steps may change together as long as the
global batch (their product: sequences per optimizer step) stays the same; a new world size then loads
the tag's universal form (``gapt_ds.universal``). Every other DeepSpeed config key (the ``"gapt"`` block
included) and training argument may change only with ``--allow-config-change``, except the ones below,
which never affect the trained weights.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

# training arguments free to change on resume: budget, evaluation, saving, logging, paths, launcher plumbing,
# memory and speed (activation checkpointing and compile leave losses and gradients unchanged)
MAY_CHANGE_ARGS = frozenset({
    "activation_checkpointing", "compile",
    "steps", "eval_every", "eval_batches", "arith_eval", "save_every", "keep_last", "no_progress", "run_dir",
    "cache_dir", "deepspeed_config", "local_rank", "deepspeed", "resume", "overwrite", "allow_config_change",
    "max_skipped_steps", "dist_timeout", "recipe"})
# arguments compared through the fixed fingerprint instead (their resolved values)
FIXED_ARGS = frozenset({"data", "tokenizer", "seq_len", "seed", "model", "model_config", "init_from", "dropout"})
# model config keys that may change (with --allow-config-change): regularisation, not the weights' shapes
SOFT_MODEL_KEYS = frozenset({"attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"})
# the fingerprint's batch layout: free to change while the global batch (their product) stays the same
LAYOUT = ("world_size", "micro_batch", "grad_accum")
# DeepSpeed config sections and "gapt" keys that only change what is logged or measured, and the batch keys
# (checked through the fingerprint's layout instead)
MAY_CHANGE_CONFIG = frozenset({
    "tensorboard", "wandb", "csv_monitor", "comet", "steps_per_print", "wall_clock_breakdown", "flops_profiler",
    "comms_logger", "gapt.alignment_every", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "train_batch_size"})
_UNSET = object()
Change = tuple[str, Any, Any]


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Every (key path, old, new) where two JSON-like values differ; dicts are compared key by key."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for key in sorted(old.keys() | new.keys(), key=str):
            out += diff(old.get(key, _UNSET), new.get(key, _UNSET), f"{path}.{key}" if path else str(key))
        return out
    return [] if old == new else [(path, old, new)]


def settings(ds_config: dict, args: dict) -> dict:
    """What a checkpoint records of its run, to compare on resume."""
    return {"ds_config": ds_config, "args": args}


def config_changes(saved: dict, current: dict) -> list[Change]:
    """The differences that ``--allow-config-change`` must accept."""
    changes = [(f"ds_config.{p}", a, b) for p, a, b in diff(saved["ds_config"], current["ds_config"])
               if not any(p == k or p.startswith(k + ".") for k in MAY_CHANGE_CONFIG)]
    old_args, new_args = saved["args"], current["args"]
    for key in sorted(old_args.keys() & new_args.keys() - MAY_CHANGE_ARGS - FIXED_ARGS):  # options of both versions
        if old_args[key] != new_args[key]:
            changes.append((f"args.{key}", old_args[key], new_args[key]))
    return changes


def fixed_changes(saved: dict, current: dict) -> list[Change]:
    """Differences in the fingerprint, which no flag can accept; a model config is compared key by key."""
    def expand(fp: dict) -> dict:
        model = fp.get("model")
        return {**fp, "model": json.loads(model)} if isinstance(model, str) and model.lstrip().startswith("{") else fp

    return diff(expand(saved), expand(current))


def layout_problem(saved: dict, current: dict) -> Optional[str]:
    """Why the current batch layout cannot continue the checkpoint's (None: it can): the global batch
    W x B x GAS (sequences per optimizer step, DeepSpeed's train_batch_size) must stay the same."""
    (w0, b0, g0), (w, b, g) = (tuple(fp[k] for k in LAYOUT) for fp in (saved, current))
    total, now = w0 * b0 * g0, w * b * g
    if total == now:
        return None
    fixes = []
    if total % (w * b) == 0:
        fixes.append(f"gradient_accumulation_steps {total // (w * b)}")
    if total % (w * g) == 0:
        fixes.append(f"train_micro_batch_size_per_gpu {total // (w * g)}")
    fix = (f"set {' or '.join(fixes)}" if fixes else f"no micro-batch x accumulation split of {total} sequences "
           f"over {w} ranks exists: use a number of ranks that divides {total}")
    return (f"global batch: the checkpoint trained {w0} rank(s) x micro-batch {b0} x {g0} accumulation step(s) = "
            f"{total} sequences per optimizer step; this run has {w} x {b} x {g} = {now}. The global batch must "
            f"stay {total} on resume: {fix} (train_batch_size, if set, {total})")


def nvme_problem(saved: dict, current: dict, ds_config: dict) -> Optional[str]:
    """NVMe-offloaded state is kept per rank outside the checkpoint's ZeRO files: it cannot move to another
    world size."""
    zero = ds_config.get("zero_optimization") or {}
    nvme = [k for k in ("offload_optimizer", "offload_param") if (zero.get(k) or {}).get("device") == "nvme"]
    if not nvme or saved["world_size"] == current["world_size"]:
        return None
    return (f"world size {saved['world_size']} -> {current['world_size']}: zero_optimization.{nvme[0]} is on NVMe, "
            "whose per-rank swap files DeepSpeed's universal checkpoint cannot redistribute; resume on "
            f"{saved['world_size']} ranks")


def _is_soft(change: Change) -> bool:
    path = change[0].split(".")
    return len(path) == 2 and path[0] == "model" and path[1] in SOFT_MODEL_KEYS


def _show(value: Any) -> str:
    text = "(unset)" if value is _UNSET else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(changes: list[Change], suffix: str = "") -> str:
    return "\n".join(f"  {path}: {_show(old)} -> {_show(new)}{suffix}" for path, old, new in changes)


def check(tag_dir: Path, run_state: dict, fingerprint: dict, current: dict, allow_change: bool) -> list[Change]:
    """Refuse (ValueError listing every difference) unless only allowed changes were made; returns the
    accepted config changes, already reported as a warning."""
    model_and_fixed = [c for c in fixed_changes(run_state["fingerprint"], fingerprint) if c[0] not in LAYOUT]
    fixed = [c for c in model_and_fixed if not _is_soft(c)]
    batch = layout_problem(run_state["fingerprint"], fingerprint) or nvme_problem(run_state["fingerprint"],
                                                                                   fingerprint, current["ds_config"])
    saved = run_state.get("settings")
    if saved is None:
        warnings.warn(f"{tag_dir} does not record its DeepSpeed config and arguments (an older gapt-ds): "
                      "config changes on this resume are not checked")
    changes = [c for c in model_and_fixed if _is_soft(c)] + (config_changes(saved, current) if saved else [])
    if fixed or batch or (changes and not allow_change):
        lines = [f"{tag_dir} was written by a run with other settings:"]
        if fixed:
            lines.append(describe(fixed, "  (fixed)"))
        if changes:
            lines.append(describe(changes))
        if batch:
            lines.append(f"  {batch}")
        if fixed:
            lines.append("Settings marked (fixed) can never change on resume: use a new --run-dir.")
        elif changes and not allow_change:
            lines.append("Pass --allow-config-change to resume with these changes.")
        raise ValueError("\n".join(lines))
    if changes:
        warnings.warn(f"--allow-config-change: resuming {tag_dir} with changed settings:\n{describe(changes)}")
    return changes


def as_records(changes: list[Change]) -> list[dict]:
    """The changes as JSON rows for ``metrics.jsonl``."""
    return [{"key": path, "old": None if old is _UNSET else old, "new": None if new is _UNSET else new}
            for path, old, new in changes]


@dataclass
class Admitted:
    """What ``admit`` accepted: the tag, the config changes (records) and, on a new world size, the
    checkpoint's batch layout (world size, micro-batch, accumulation) and whether its universal form is used."""

    tag: str
    changes: list[dict] = field(default_factory=list)
    saved_layout: Optional[tuple[int, int, int]] = None
    universal: bool = False


def admit(ckpt_dir: Path, fingerprint: dict, current: dict, allow_change: bool) -> Admitted:
    """Rank 0, before the engine exists: pick the complete tag to resume, check its files unpickle safely and
    its settings match. On a new world size, a ZeRO 1-3 tag is converted to its universal form (once)."""
    from gapt_ds import checkpoint, universal
    from gapt_ds.safe_load import verify_tag

    try:
        tag_dir = checkpoint.tag_directory(ckpt_dir)
        verify_tag(tag_dir)  # DeepSpeed's load_checkpoint unpickles with weights_only=False
        run_state = checkpoint.peek_run_state(tag_dir)
        admitted = Admitted(tag_dir.name, as_records(check(tag_dir, run_state, fingerprint, current, allow_change)))
        saved = tuple(run_state["fingerprint"][k] for k in LAYOUT)
        if saved != tuple(fingerprint[k] for k in LAYOUT):
            _announce_layout(tag_dir, saved, fingerprint, current["ds_config"])
            admitted.saved_layout = saved
            admitted.universal = saved[0] != fingerprint["world_size"] and universal.needs_universal(tag_dir)
        if admitted.universal:
            universal.convert(tag_dir, say=lambda line: print(f"gapt-ds: {line}", flush=True))
    except ValueError as err:
        raise ValueError(f"--resume: {err}") from None
    return admitted


def _announce_layout(tag_dir: Path, saved: tuple, fingerprint: dict, ds_config: dict) -> None:
    """One line for an accepted new batch layout; a warning when it changes global MBE's micro-batch."""
    now = tuple(fingerprint[k] for k in LAYOUT)
    print(f"gapt-ds: resuming {tag_dir.name}, written by {saved[0]} rank(s) x micro-batch {saved[1]} x {saved[2]} "
          f"accumulation, on {' x '.join(map(str, now))}: the same {saved[0] * saved[1] * saved[2]} sequences per "
          "optimizer step", flush=True)
    if (ds_config.get("gapt") or {}).get("mbe_mode") == "global" and saved[0] * saved[1] != now[0] * now[1]:
        warnings.warn(f"mbe_mode \"global\" measures MBE over the global micro-batch (ranks x micro-batch): "
                      f"{saved[0] * saved[1]} sequences before, {now[0] * now[1]} now, so the MBE term changes; "
                      "keep ranks x micro-batch the same to keep it")
