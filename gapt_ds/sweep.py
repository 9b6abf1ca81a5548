"""``gapt-ds sweep RECIPE``: a grid over config keys or train flags x arms x seeds, with paired statistics.

    gapt-ds sweep text-cpu --out runs/sweep_text --grid gapt.mbe_weight=0.003,0.01,0.1,1 \\
        --grid gapt.gate.improvement=absolute,relative --arms ce,gapt --seeds 0,1,2 -- --data 'corpus/*.txt' ...
    gapt-ds sweep forgetting --out runs/sweep_forg --grid gapt.mbe_weight=0.3,1,3 --seeds 0-9
    gapt-ds sweep arithmetic --out runs/s --grid=--steps=200,400 ...     # a train flag (note the `=`)

A grid key with dots (``gapt.gate.improvement``) sets that entry of the recipe's DeepSpeed JSON; a key that
starts with ``--`` is a flag of the run command. Values are JSON where they parse (numbers, true) and strings
otherwise. Each cell is a normal run directory ``OUT/<point>/<arm>-s<seed>``; the baseline arm (``--baseline``,
default ``ce``) runs once per seed in ``OUT/baseline/`` when every grid key is one the CE-only baseline ignores
(``gapt.mbe_weight``, ``gapt.gate.*``), else at every point. Same seed = same initialisation and data order in
every arm, so the report pairs cells by seed (see ``gapt_ds.stats``).

Cells run one after another. A re-run skips finished cells (``summary.json`` present), resumes an interrupted
one from its checkpoint (``gapt-ds train --resume``; pass ``--save-every N`` after ``--`` to have checkpoints)
and restarts one that has none. A failed cell is retried once, then the sweep stops naming it and its log.
``OUT/sweep.json`` records each cell's wall time; the report goes to ``OUT/report/`` (``sweep.md``,
``sweep.json``, one PNG per metric).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# keys the CE-only baseline does not read: its cells can be shared by every grid point
BASELINE_INVARIANT = ("gapt.mbe_weight", "gapt.gate.")


@dataclass(frozen=True)
class Cell:
    point: tuple[tuple[str, Any], ...]  # ((key, value), ...); () for the shared baseline
    arm: str
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(specs: list[str]) -> list[tuple[str, list[Any]]]:
    grid, problems = [], []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            problems.append(f"--grid {spec!r}: expected KEY=V1,V2,... (a flag as --grid=--steps=100,200)")
            continue
        if not key.startswith("--") and "." not in key:
            problems.append(f"--grid {spec!r}: a config key is dotted into the DeepSpeed JSON (e.g. gapt.{key}); "
                            f"a run flag starts with -- (write --grid=--{key}=...)")
        grid.append((key, [parse_value(v) for v in values.split(",")]))
    keys = [k for k, _ in grid]
    problems += [f"--grid {k!r} given twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    if problems:
        raise ValueError("invalid sweep grid:\n  " + "\n  ".join(problems))
    return grid


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ValueError(f"--seeds must be integers or ranges like 0-9, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"--seeds must name distinct seeds, got {text!r}")
    return seeds


def point_slug(point: tuple[tuple[str, Any], ...]) -> str:
    return ",".join(f"{k.lstrip('-')}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in point) or "baseline"


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--grid {key}: {p!r} is not a JSON object in the config")
    node[leaf] = value


def plan(args: argparse.Namespace, grid: list[tuple[str, list[Any]]]) -> tuple[list[Cell], bool]:
    """All cells in run order (baseline first, then point by point, seed-major within a point)."""
    out = Path(args.out)
    keys = [k for k, _ in grid]
    shared = args.baseline == "ce" and args.baseline in args.arms
    shared = shared and all(k.startswith(BASELINE_INVARIANT) for k in keys)
    points = [tuple(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])]
    cells = []
    if shared:
        cells += [Cell((), args.baseline, s, out / "baseline" / f"{args.baseline}-s{s}") for s in args.seeds]
    for point in points:
        for arm in args.arms:
            if shared and arm == args.baseline:
                continue
            cells += [Cell(point, arm, s, out / point_slug(point) / f"{arm}-s{s}") for s in args.seeds]
    return cells, shared


def cell_command(args: argparse.Namespace, cell: Cell, extra: list[str], resume: bool) -> tuple[list[str], dict]:
    """The cell's command and environment: the recipe's config with the point applied, written next to the cell."""
    from gapt_ds.config import GaptConfig, load_json
    from gapt_ds.recipes import run as recipes

    recipe = recipes.RECIPES[args.recipe]
    flags = [x for k, v in cell.point if k.startswith("--") for x in (k, str(v))]
    if args.config:
        cfg = load_json(args.config)
    elif recipe.module:
        from gapt_ds.recipes.forgetting import DS_CONFIG

        cfg = json.loads(json.dumps(DS_CONFIG))
    else:
        cfg = recipes.shipped_config(recipe.config)
    for key, value in cell.point:
        if not key.startswith("--"):
            set_dotted(cfg, key, value)
    cfg.setdefault("gapt", {})["algorithm"] = cell.arm
    GaptConfig.from_ds_config(cfg, source=f"sweep cell {cell.name}")
    config_path = cell.run_dir.parent / f"{cell.arm}-s{cell.seed}.ds_config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(cfg, indent=2))
    if recipe.module:
        cmd = [sys.executable, "-m", recipe.module, "--arm", cell.arm, "--seed", str(cell.seed),
               "--run-dir", str(cell.run_dir), "--deepspeed_config", str(config_path), *extra, *flags]
        env = dict(os.environ, MASTER_PORT=str(recipes._free_port()))
        if not recipes._has_gpu():
            env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
        return cmd, env
    launcher, env = recipes._launcher(args.ranks)
    cmd = [*launcher, "gapt_ds.train", "--deepspeed_config", str(config_path), *recipe.args, "--seed", str(cell.seed),
           "--run-dir", str(cell.run_dir), "--no-progress", "--recipe", args.recipe, *extra, *flags]
    return cmd + (["--resume"] if resume else []), env


def _fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown (until a cell has run)"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _run_cell(args: argparse.Namespace, cell: Cell, extra: list[str], resume: bool, script: bool,
              log: Path) -> subprocess.CompletedProcess:
    """Run one cell, retrying once: the launcher's rendezvous port can be taken by another process between
    the moment it is picked and the moment it is bound (EADDRINUSE), and a second try picks a new one."""
    for attempt in range(2):
        cmd, env = cell_command(args, cell, extra, resume)
        with open(log, "a") as fh:
            proc = subprocess.run(cmd, env={k: v for k, v in env.items() if v != ""}, stdout=fh,
                                  stderr=subprocess.STDOUT)
        if proc.returncode == 0 or attempt:
            return proc
        print(f"[sweep] {cell.name} failed (exit {proc.returncode}); retrying once, see {log}", flush=True)
        resume = not script and (cell.run_dir / "checkpoints" / "latest").is_file()
        if cell.run_dir.exists() and not resume:
            shutil.rmtree(cell.run_dir)
    return proc


def run_cells(args: argparse.Namespace, cells: list[Cell], extra: list[str]) -> dict:
    """Run the unfinished cells in order; the record of wall times survives interruptions."""
    record_path = Path(args.out) / "sweep.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"cells": {}}
    todo = [c for c in cells if not (c.run_dir / "summary.json").is_file()]
    times = [v["seconds"] for v in record["cells"].values() if "seconds" in v]
    per_cell = sum(times) / len(times) if times else args.cell_seconds
    estimate = f"{_fmt_s(per_cell)} per cell, {_fmt_s(per_cell * len(todo))} in total" if per_cell else _fmt_s(None)
    print(f"[sweep] {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run; estimate {estimate}",
          flush=True)
    from gapt_ds.recipes.run import RECIPES

    script = bool(RECIPES[args.recipe].module)  # a recipe with its own script (forgetting) has no --resume
    start = time.perf_counter()
    for i, cell in enumerate(todo, 1):
        resume = not script and (cell.run_dir / "checkpoints" / "latest").is_file()
        if cell.run_dir.exists() and not resume:
            shutil.rmtree(cell.run_dir)  # an interrupted cell without a checkpoint starts over
        log = cell.run_dir.parent / f"{cell.arm}-s{cell.seed}.log"
        print(f"[sweep] {i}/{len(todo)} {cell.name}{' (resuming)' if resume else ''}", flush=True)
        t0 = time.perf_counter()
        proc = _run_cell(args, cell, extra, resume, script, log)
        if proc.returncode != 0:
            raise ValueError(f"sweep cell {cell.name} failed (exit {proc.returncode}); see {log}")
        seconds = time.perf_counter() - t0
        entry = record["cells"].get(cell.name, {})
        entry = {"seconds": entry.get("seconds", 0.0) + seconds, "resumed": resume or entry.get("resumed", False)}
        record["cells"][cell.name] = entry
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(record_path)
        times.append(seconds)
        left = (len(todo) - i) * sum(times) / len(times)
        print(f"[sweep] {cell.name} took {_fmt_s(seconds)}; about {_fmt_s(left)} left", flush=True)
    measured = time.perf_counter() - start
    print(f"[sweep] ran {len(todo)} cells in {_fmt_s(measured) if todo else '0 s'}", flush=True)
    return record


def build_parser() -> argparse.ArgumentParser:
    from gapt_ds.recipes.run import RECIPES

    p = argparse.ArgumentParser(prog="gapt-ds sweep", description=__doc__.split("\n")[0])
    p.add_argument("recipe", choices=sorted(RECIPES),
                   help="the recipe whose config and run flags every cell starts from")
    p.add_argument("--out", required=True, help="sweep directory (cells, sweep.json, report/)")
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeat for a product grid)")
    p.add_argument("--arms", default="ce,gapt", help="comma-separated algorithms")
    p.add_argument("--baseline", default="ce", help="the arm every other arm is compared against, seed by seed")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds or ranges (0-9)")
    p.add_argument("--ranks", type=int, default=2, help="ranks per cell (GPUs, or CPU processes)")
    p.add_argument("--config", default=None, help="DeepSpeed JSON instead of the recipe's")
    p.add_argument("--metrics", default=None, help="comma-separated metrics for the report (default: all found)")
    p.add_argument("--cell-seconds", type=float, default=None, help="per-cell time for the first estimate")
    p.add_argument("--report-only", action="store_true", help="do not run cells; report the finished ones")
    return p


def main(argv: Optional[list[str]] = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.seeds = parse_seeds(args.seeds)
    args.arms = [a for a in args.arms.split(",") if a]
    grid = parse_grid(args.grid)
    problems = []
    if args.baseline not in args.arms:
        problems.append(f"--baseline {args.baseline!r} is not one of --arms {','.join(args.arms)}")
    if args.ranks < 1:
        problems.append(f"--ranks must be >= 1, got {args.ranks}")
    if args.config and not Path(args.config).is_file():
        problems.append(f"--config: file not found: {args.config}")
    if problems:
        raise ValueError("invalid sweep arguments:\n  " + "\n  ".join(problems))
    cells, shared = plan(args, grid)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"[sweep] {args.recipe}: {len(grid)} grid keys, arms {','.join(args.arms)}, seeds "
          f"{','.join(map(str, args.seeds))}; baseline {args.baseline} "
          f"{'shared by every point' if shared else 'run at every point'}", flush=True)
    record = {"cells": {}} if args.report_only else run_cells(args, cells, extra)
    from gapt_ds.sweep_report import write_report

    md = write_report(Path(args.out), cells, grid, args.baseline, shared, args.metrics, record, argv, extra)
    print(f"[sweep] report: {md}", flush=True)
    return md
