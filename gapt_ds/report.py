"""``gapt-ds report RUN_DIR... --out DIR``: plots and a comparison table from runs' TensorBoard logs.

Each run directory (written by ``gapt-ds train`` or a recipe) holds ``tensorboard/``, ``ds_config.json``
(its ``"gapt"`` algorithm names the arm) and ``args.json`` (its seed). The report writes one PNG per run
(CE and validation CE, MBE per layer and mean, gradient alignment when logged; compression phases as
shaded bands) and ``report.md``: per arm the mean ± std over seeds of each final metric, and the
relative change of every other arm against the ``ce`` baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from gapt_ds import metrics as tags

# (column, (tag, "last" value or "min" over the run), lower is better?)
METRICS = [
    ("val_ce (final)", (tags.eval_tag("val_ce"), "last"), True),
    ("val_ce (best)", (tags.eval_tag("val_ce"), "min"), True),
    ("train MBE (final)", (tags.MBE_MEAN, "last"), True),
    ("ID answer-CE", (tags.eval_tag("id_answer_ce"), "last"), True),
    ("OOD answer-CE", (tags.eval_tag("ood_answer_ce"), "last"), True),
    ("ID exact match", (tags.eval_tag("id_exact_match"), "last"), False),
    ("OOD exact match", (tags.eval_tag("ood_exact_match"), "last"), False),
    ("separation", (tags.eval_tag("separation"), "last"), False),
    ("forgetting", (tags.eval_tag("forgetting"), "last"), True),
]


@dataclass
class Run:
    path: Path
    recipe: str
    arm: str
    seed: int
    scalars: pd.DataFrame = field(repr=False)

    def series(self, tag: str) -> pd.Series:
        rows = self.scalars[self.scalars["tag"] == tag]
        return rows.set_index("step")["value"].sort_index()

    def metric(self, spec: tuple[str, str]) -> Optional[float]:
        tag, how = spec
        s = self.series(tag)
        if s.empty:
            return None
        return float(s.iloc[-1] if how == "last" else s.min())


def load_run(path: Path) -> Run:
    from tbparse import SummaryReader

    tb = path / "tensorboard"
    if not tb.is_dir():
        raise ValueError(f"{path}: no tensorboard/ directory (not a gapt-ds run directory?)")
    cfg_file, args_file = path / "ds_config.json", path / "args.json"
    arm = json.loads(cfg_file.read_text()).get("gapt", {}).get("algorithm", "gapt") if cfg_file.is_file() else "gapt"
    run_args = json.loads(args_file.read_text()) if args_file.is_file() else {}
    seed, recipe = run_args.get("seed", 0), run_args.get("recipe") or run_args.get("data", "?")
    scalars = SummaryReader(str(tb)).scalars
    if scalars.empty:
        raise ValueError(f"{tb}: no scalars logged")
    # a resumed run re-logs steps in a new event file: keep the last value per (tag, step)
    scalars = scalars.drop_duplicates(subset=["tag", "step"], keep="last")
    return Run(path, recipe, arm, int(seed), scalars)


def _shade_phases(ax, phase: pd.Series) -> None:
    compress = phase == 2
    start = None
    steps = list(phase.index)
    for i, step in enumerate(steps):
        if compress.iloc[i] and start is None:
            start = step - 0.5
        if start is not None and (not compress.iloc[i] or i == len(steps) - 1):
            end = step - 0.5 if not compress.iloc[i] else step + 0.5
            ax.axvspan(start, end, color="tab:orange", alpha=0.15, lw=0)
            start = None


def plot_run(run: Run, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = set(run.scalars["tag"])
    align = sorted(t for t in logged if t.startswith(tags.ALIGN))
    panels = 3 if align else 2
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.6 * panels), sharex=True)
    phase = run.series(tags.PHASE)
    ax = axes[0]
    ax.plot(run.series(tags.CE), label="train CE", lw=1)
    if tags.eval_tag("val_ce") in logged:
        ax.plot(run.series(tags.eval_tag("val_ce")), "o-", label="validation CE", ms=3)
    ax.set_ylabel("loss (nats)")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[1]
    for tag in sorted(t for t in logged if t.startswith(tags.MBE_LAYER)):
        ax.plot(run.series(tag), lw=0.8, alpha=0.7, label=tag.rsplit("/", 1)[-1])
    ax.plot(run.series(tags.MBE_MEAN), "k", lw=1.5, label="mean")
    ax.set_ylabel("MBE (nats)")
    ax.legend(loc="upper right", fontsize=7, ncol=4)
    if align:
        ax = axes[2]
        for tag in align:
            ax.plot(run.series(tag), lw=1, label=tag.removeprefix(tags.ALIGN))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("cos(∇CE, ∇MBE)")
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    for ax in axes:
        if not phase.empty:
            _shade_phases(ax, phase)
    axes[-1].set_xlabel("optimizer step (shaded: compression phase)")
    fig.suptitle(f"{run.path.name}: {run.recipe}, {run.arm}, seed {run.seed}", fontsize=10)
    fig.tight_layout()
    png = out / f"{run.path.name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g}"


def comparison_table(runs: list[Run]) -> str:
    """One markdown table per recipe (runs of different recipes are never averaged together)."""
    recipes = sorted({r.recipe for r in runs})
    return "\n\n".join((f"### {name}\n\n" if len(recipes) > 1 else "")
                       + _recipe_table([r for r in runs if r.recipe == name])
                       for name in recipes)


def _recipe_table(runs: list[Run]) -> str:
    arms = sorted({r.arm for r in runs}, key=lambda a: (a != "ce", a))
    values = {(arm, col): [v for r in runs if r.arm == arm for v in [r.metric(spec)] if v is not None]
              for arm in arms for col, spec, _ in METRICS}
    cols = [(col, lower) for col, _, lower in METRICS if any(values[(a, col)] for a in arms)]
    lines = ["| arm | seeds | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm in arms:
        seeds = sorted({r.seed for r in runs if r.arm == arm})
        lines.append(f"| {arm} | {len(seeds)} | " + " | ".join(_fmt(values[(arm, c)]) for c, _ in cols) + " |")
    if "ce" in arms:
        for arm in arms:
            if arm == "ce":
                continue
            cells = []
            for col, lower in cols:
                base, other = values[("ce", col)], values[(arm, col)]
                if base and other and statistics.fmean(base) != 0:
                    change = (statistics.fmean(other) - statistics.fmean(base)) / abs(statistics.fmean(base))
                    better = (change < 0) == lower
                    cells.append(f"{100 * change:+.1f}% ({'better' if better else 'worse'})")
                else:
                    cells.append("–")
            lines.append(f"| {arm} vs ce | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> Path:
    p = argparse.ArgumentParser(prog="gapt-ds report", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (each with tensorboard/)")
    p.add_argument("--out", required=True, help="output directory for report.md and the PNGs")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        raise ValueError(f"not a directory: {', '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(Path(r)) for r in args.runs]
    pngs = [plot_run(r, out) for r in runs]
    body = ["# gapt-ds report", "", comparison_table(runs), "",
            "Mean ± std over seeds of each run's last logged value (best = minimum over evaluations); "
            "relative change of each arm's mean against the `ce` baseline.", ""]
    body += [f"![{p.stem}]({p.name})" for p in pngs]
    md = out / "report.md"
    md.write_text("\n".join(body) + "\n")
    return md
