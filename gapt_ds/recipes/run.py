"""``gapt-ds recipe NAME``: the paper's experiments, baseline (``ce``) vs GAPT, same seeds and budget
(§: the sections of docs/algorithm.md).

    gapt-ds recipe arithmetic --seeds 0,1,2 --out runs/arithmetic          # §6.2, CPU scale, 2 ranks
    gapt-ds recipe arithmetic-cpu --seeds 0,1,2 --out runs/arith-cpu      # 1-2/3-4 digits, reversed, per problem
    gapt-ds recipe forgetting --seeds 0,1,2 --out runs/forgetting          # §6.3
    gapt-ds recipe text-cpu --seeds 0,1,2 --out runs/text -- --data 'corpus/*.txt' --tokenizer tok/spm.model
    gapt-ds recipe fineweb --ranks 8 --out runs/fineweb -- --tokenizer /data/gpt2_bpe     # §6.1, GPU node
    gapt-ds recipe cycle --seeds 0 --out runs/cycle       # §1/§5: CE-only run with cos(∇CE, ∇MBE) logged

Each (arm, seed) gets ``OUT/<arm>-s<seed>/``; at the end ``gapt-ds report`` writes ``OUT/report/``.
Arguments after ``--`` go to every run (they override the recipe's defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gapt_ds.runtime import HelpFormatter


@dataclass(frozen=True)
class Recipe:
    """One experiment. ``config``: a shipped DeepSpeed config (``ds_configs/``, installed as package data)
    and ``args``: default ``gapt-ds train`` arguments, run under the ``deepspeed`` launcher; or
    ``module``: a script of its own (it has its own config), run as ``python -m MODULE``."""

    config: str = ""
    args: tuple[str, ...] = ()
    module: str = ""
    arms: tuple[str, ...] = ("ce", "gapt")


_ARITHMETIC = ("--data", "arithmetic", "--tokenizer", "char", "--model", "cpu", "--seq-len", "64")
RECIPES: dict[str, Recipe] = {
    "arithmetic": Recipe("recipes/arithmetic.json", (*_ARITHMETIC, "--steps", "1000", "--eval-every", "200",
                                                     "--save-every", "0", "--arith-eval", "512")),
    # CPU-scale multiplication: ID 1-2 / OOD 3-4 digits, reversed fixed-width answers, one problem per sequence,
    # answer-only loss (see gapt_ds/data/arithmetic.py)
    "arithmetic-cpu": Recipe("recipes/arithmetic_cpu.json",
                             ("--data", "arithmetic", "--tokenizer", "char", "--model", "cpu", "--seq-len", "24",
                              "--arith-digits", "1-2:3-4", "--arith-reverse", "--arith-pad", "--arith-per-problem",
                              "--arith-answer-loss", "--steps", "5000", "--eval-every", "500", "--save-every", "0",
                              "--arith-eval", "512")),
    "text-cpu": Recipe("cpu_default.json", ("--model", "cpu", "--seq-len", "128", "--steps", "600", "--eval-every",
                                            "100", "--save-every", "0", "--arith-eval", "0")),
    "fineweb": Recipe("single_node_zero1_bf16.json",
                      ("--data", "hf:HuggingFaceFW/fineweb:sample-10BT", "--max-tokens", "800000000", "--model", "124m",
                       "--seq-len", "1024", "--steps", "1750", "--eval-every", "250", "--save-every", "500",
                       "--arith-eval", "0")),
    "forgetting": Recipe(module="gapt_ds.recipes.forgetting"),
    # CE-only training with the gradient-alignment monitor, to watch cos(∇CE, ∇MBE) change sign
    "cycle": Recipe("recipes/cycle.json", (*_ARITHMETIC, "--steps", "600", "--eval-every", "200", "--save-every", "0",
                                           "--arith-eval", "256"), arms=("ce",)),
}


def shipped_config(name: str) -> dict:
    """A DeepSpeed config shipped with gapt-ds, by its path under ``ds_configs/`` (e.g. ``cpu_default.json``)."""
    from importlib.resources import as_file, files

    from gapt_ds.config import load_json

    with as_file(files("gapt_ds.ds_configs").joinpath(name)) as path:
        return load_json(path)




def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="gapt-ds recipe", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("name", choices=sorted(RECIPES), help="the experiment")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: one run per arm and seed")
    p.add_argument("--arms", default=None, help="comma-separated algorithms (default: ce,gapt; cycle: ce)")
    p.add_argument("--out", required=True, help="directory for the runs and the report")
    p.add_argument("--ranks", type=int, default=2, help="ranks per run (GPUs, or CPU processes)")
    p.add_argument("--config", default=None, help="DeepSpeed JSON instead of the recipe's")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    args.arms = args.arms.split(",") if args.arms else list(RECIPES[args.name].arms)
    return args, extra


def _free_port() -> int:
    with socket.socket() as sock:  # a free rendezvous port per run: concurrent recipes must not collide
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher(ranks: int) -> tuple[list[str], dict]:
    env = dict(os.environ)
    quiet: list[str] = []
    if not _has_gpu():
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
        quiet = ["--log_level", "warning"]  # the launcher's INFO lines (CUDA_VISIBLE_DEVICES=0,1 on a CPU machine)
    return [str(Path(sys.executable).parent / "deepspeed"), *quiet, "--num_gpus", str(ranks), "--master_port",
            str(_free_port()), "--module"], env


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _script_command(recipe: Recipe, args: argparse.Namespace, arm: str, seed: int, run_dir: Path,
                    extra: list[str]) -> tuple[list[str], dict]:
    """A recipe with its own script: one process (it starts its own single-rank process group)."""
    config = ["--deepspeed_config", args.config] if args.config else []
    cmd = [sys.executable, "-m", recipe.module, "--arm", arm, "--seed", str(seed), "--run-dir", str(run_dir),
           *config, *extra]
    env = dict(os.environ, MASTER_PORT=str(_free_port()),
               DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR") or ("" if _has_gpu() else "cpu"))
    return cmd, env


def _train_command(recipe: Recipe, args: argparse.Namespace, arm: str, seed: int, run_dir: Path,
                   extra: list[str]) -> tuple[list[str], dict]:
    """``gapt-ds train`` under the deepspeed launcher, with the arm's config written next to the runs."""
    from gapt_ds.config import GaptConfig, load_json

    cfg = load_json(args.config) if args.config else shipped_config(recipe.config)
    cfg.setdefault("gapt", {})["algorithm"] = arm
    GaptConfig.from_ds_config(cfg, source=f"{args.name} recipe, arm {arm}")
    config = Path(args.out) / f"{arm}.json"
    config.write_text(json.dumps(cfg, indent=2))
    launcher, env = _launcher(args.ranks)
    cmd = [*launcher, "gapt_ds.train", "--deepspeed_config", str(config), *recipe.args, "--seed", str(seed),
           "--run-dir", str(run_dir), "--no-progress", "--recipe", args.name, *extra]
    return cmd, env


def run_recipe(argv: Optional[list[str]] = None) -> Path:
    args, extra = parse_args(argv)
    from gapt_ds.algorithms import algorithm_class
    from gapt_ds.report import main as report

    for arm in args.arms:  # a misspelt arm fails before the first run starts
        algorithm_class(arm)
    recipe = RECIPES[args.name]
    command = _script_command if recipe.module else _train_command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = []
    for arm in args.arms:
        for seed in args.seeds:
            run_dir = out / f"{arm}-s{seed}"
            run_dirs.append(str(run_dir))
            cmd, env = command(recipe, args, arm, seed, run_dir, extra)
            print(f"[recipe {args.name}] {arm} seed {seed} -> {run_dir}", flush=True)
            subprocess.run(cmd, check=True, env={k: v for k, v in env.items() if v != ""})
    md = report([*run_dirs, "--out", str(out / "report")])
    print(f"[recipe {args.name}] report: {md}")
    return md
