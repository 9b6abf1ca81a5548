"""The report of ``gapt-ds sweep``: per-cell metrics, paired differences against the baseline, plots.

Metrics of a cell (a run directory): every number in ``summary.json`` (the final evaluation), plus from
``metrics.jsonl`` (else the TensorBoard log; steps de-duplicated, a resumed run keeps the last record of a step):
``train_ce_end`` / ``train_mbe_end`` (mean over the last 10% of steps), ``compress_frac`` (share of steps
in the compression phase), ``switches`` (phase changes) and ``mbe_layer<i>_end`` (MBE of each measured layer,
mean over the last 10% of steps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from gapt_ds.stats import mean_ci, paired

SKIP = {"step", "world_size"}
FIRST = ["ood_answer_ce", "ood_exact_match", "id_answer_ce", "id_exact_match", "val_ce", "val_mbe", "separation",
         "forgetting", "train_ce_end", "train_mbe_end", "compress_frac", "switches", "phase_switches"]


def step_records(run_dir: Path) -> list[dict]:
    """Per-step {step, ce, mbe_mean, phase, mbe: [per layer]} from ``metrics.jsonl``, else from TensorBoard."""
    log = run_dir / "metrics.jsonl"
    by_step: dict[int, dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "phase" in rec:
                by_step[rec["step"]] = rec  # a resumed run re-logs steps: keep the last
    elif (run_dir / "tensorboard").is_dir():
        from tbparse import SummaryReader

        df = SummaryReader(str(run_dir / "tensorboard")).scalars
        df = df[df["tag"].str.startswith("gapt/")].drop_duplicates(subset=["tag", "step"], keep="last")
        wide = df.pivot(index="step", columns="tag", values="value").sort_index()
        layers = sorted((c for c in wide.columns if c.startswith("gapt/mbe/layer_")),
                        key=lambda c: int(c.rsplit("_", 1)[1]))
        if {"gapt/ce", "gapt/mbe_mean", "gapt/phase"} <= set(wide.columns):
            for step, row in wide.dropna(subset=["gapt/phase"]).iterrows():
                by_step[int(step)] = {"ce": row["gapt/ce"], "mbe_mean": row["gapt/mbe_mean"],
                                      "phase": int(row["gapt/phase"]), "mbe": [row[c] for c in layers]}
    return [by_step[s] for s in sorted(by_step)]


def cell_metrics(run_dir: Path) -> dict[str, float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {k: float(v) for k, v in summary.items() if k not in SKIP and isinstance(v, (int, float))}
    steps = step_records(run_dir)
    if not steps:
        return out
    tail = steps[-max(1, len(steps) // 10):]
    out["train_ce_end"] = sum(r["ce"] for r in tail) / len(tail)
    out["train_mbe_end"] = sum(r["mbe_mean"] for r in tail) / len(tail)
    out["compress_frac"] = sum(r["phase"] == 2 for r in steps) / len(steps)
    out["switches"] = float(sum(a["phase"] != b["phase"] for a, b in zip(steps, steps[1:])))
    for i in range(len(tail[0].get("mbe") or [])):
        out[f"mbe_layer{i}_end"] = sum(r["mbe"][i] for r in tail) / len(tail)
    return {k: float(v) for k, v in out.items()}


def _table_rows(cells, metric, values, baseline, shared) -> list[dict]:
    """One row per (point, non-baseline arm): the paired comparison over the seeds both have."""
    rows = []
    base_of = {}
    for c in cells:
        if c.arm == baseline:
            base_of[(c.point if not shared else (), c.seed)] = values.get((c.name, metric))
    groups: dict[tuple, list] = {}
    for c in cells:
        if c.arm != baseline:
            groups.setdefault((c.point, c.arm), []).append(c)
    for (point, arm), group in groups.items():
        pairs = [(base_of.get((point if not shared else (), c.seed)), values.get((c.name, metric))) for c in group]
        pairs = [(b, a) for b, a in pairs if b is not None and a is not None]
        if not pairs:
            continue
        res = paired([b for b, _ in pairs], [a for _, a in pairs])
        rows.append({"point": dict(point), "arm": arm, **res.as_dict()})
    return rows


def _g(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _markdown(metric: str, rows: list[dict], baseline: str) -> str:
    lines = [f"### {metric}", "", f"| point | arm | n | {baseline} | arm | diff (arm − {baseline}) [95% CI] | rel | "
             "p (paired t) | p (sign-flip) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        point = ", ".join(f"{k.lstrip('-')}={v}" for k, v in r["point"].items()) or "–"
        rel = "–" if math.isnan(r["rel"]) else f"{100 * r['rel']:+.2f}%"
        lines.append(f"| {point} | {r['arm']} | {r['n']} | {_g(r['base_mean'])} | {_g(r['arm_mean'])} | "
                     f"{_g(r['mean'])} [{_g(r['ci_low'])}, {_g(r['ci_high'])}] | {rel} | {_g(r['p_t'])} | "
                     f"{_g(r['p_perm'])} |")
    return "\n".join(lines)


def plot_metric(metric: str, cells, values, grid, baseline, shared, out: Path, rows: list[dict]) -> Optional[Path]:
    """Left: the metric against the first grid key's values, one line per arm and other-key combination, with
    95% CI bars over seeds. Right: the paired difference to the baseline with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grid:
        return None
    key, xs = grid[0]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = {json.dumps(x): (x if numeric else i) for i, x in enumerate(xs)}
    series: dict[str, dict] = {}
    for c in cells:
        v = values.get((c.name, metric))
        if v is None or (c.arm == baseline and shared):
            continue
        d = dict(c.point)
        rest = ", ".join(f"{k.lstrip('-')}={d[k]}" for k, _ in grid[1:])
        series.setdefault(f"{c.arm}{' ' + rest if rest else ''}", {}).setdefault(json.dumps(d[key]), []).append(v)
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    _plot_diffs(ax_d, rows, grid, pos, f"{metric}: arm − {baseline} (paired)")
    for label, by_x in sorted(series.items()):
        pts = sorted((pos[x], *mean_ci(v)) for x, v in by_x.items())
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[0 if math.isnan(p[2]) else p[2] for p in pts],
                    marker="o", capsize=3, label=label)
    base = [values.get((c.name, metric)) for c in cells if c.arm == baseline and shared]
    base = [b for b in base if b is not None]
    if base:
        m, h = mean_ci(base)
        ax.axhline(m, color="k", lw=1, label=f"{baseline} (shared)")
        if not math.isnan(h):
            ax.axhspan(m - h, m + h, color="k", alpha=0.1, lw=0)
    for a in (ax, ax_d):
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
            a.set_xscale("log")
        if not numeric:
            a.set_xticks(range(len(xs)), [str(x) for x in xs])
        a.set_xlabel(key.lstrip("-"))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean over seeds, bars = 95% CI", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out / f"{metric}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _plot_diffs(ax, rows: list[dict], grid, pos: dict, ylabel: str) -> None:
    """The paired differences of ``rows`` against the first grid key, with their 95% CIs."""
    key = grid[0][0]
    diffs: dict[str, list] = {}
    for r in rows:
        rest = ", ".join(f"{k.lstrip('-')}={r['point'][k]}" for k, _ in grid[1:])
        diffs.setdefault(f"{r['arm']}{' ' + rest if rest else ''}", []).append(
            (pos[json.dumps(r["point"][key])], r["mean"], r["ci_low"], r["ci_high"]))
    for label, pts in sorted(diffs.items()):
        pts.sort()
        lo = [0 if math.isnan(p[2]) else p[1] - p[2] for p in pts]
        hi = [0 if math.isnan(p[3]) else p[3] - p[1] for p in pts]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.axhline(0, color="k", lw=1)
    ax.set_ylabel(ylabel)
    ax.set_title("paired difference by seed, bars = 95% CI", fontsize=9)
    if diffs:
        ax.legend(fontsize=7)


def write_report(root: Path, cells, grid, baseline: str, shared: bool, metrics: Optional[str], record: dict,
                 argv: list[str], extra: list[str]) -> Path:
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    done = [c for c in cells if (c.run_dir / "summary.json").is_file()]
    values: dict[tuple[str, str], float] = {}
    for c in done:
        for k, v in cell_metrics(c.run_dir).items():
            values[(c.name, k)] = v
    found = {k for _, k in values}
    names = metrics.split(",") if metrics else [m for m in FIRST if m in found] + sorted(found - set(FIRST))
    sweep_rec = root / "sweep.json"
    times = (json.loads(sweep_rec.read_text()) if sweep_rec.is_file() else record).get("cells", {})
    total = sum(v.get("seconds", 0.0) for v in times.values())
    command = f"gapt-ds sweep {' '.join(argv)}" + (f" -- {' '.join(extra)}" if extra else "")
    body = ["# gapt-ds sweep report", "", f"Command: `{command}`",
            "", f"{len(done)} of {len(cells)} cells finished; measured wall time {total / 60:.1f} min over "
            f"{len(times)} timed cells ({total / max(1, len(times)):.0f} s per cell).", "",
            f"Paired by seed against `{baseline}` "
            f"({'one shared baseline run per seed' if shared else 'a baseline run at every point'}). "
            "diff = mean over seeds of (arm − baseline) with a 95% t interval; p (paired t) is scipy's "
            "`ttest_rel`; p (sign-flip) is the exact sign-flip permutation test (floor 2/2^n).", ""]
    results = {}
    for metric in names:
        rows = _table_rows(done, metric, values, baseline, shared)
        results[metric] = rows
        if rows:
            body += [_markdown(metric, rows, baseline), ""]
            png = plot_metric(metric, done, values, grid, baseline, shared, out, rows)
            if png:
                body += [f"![{metric}]({png.name})", ""]
    cells_json = {f"{k[0]}|{k[1]}": v for k, v in values.items()}
    (out / "sweep.json").write_text(json.dumps({"paired": results, "cells": cells_json},
                                               indent=1))
    md = out / "sweep.md"
    md.write_text("\n".join(body) + "\n")
    return md
