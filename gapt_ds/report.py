"""``gapt-ds report RUN_DIR... --out DIR``: plots and a comparison table from runs' TensorBoard logs.

Each run directory (written by ``gapt-ds train`` or a recipe) holds ``tensorboard/``, ``ds_config.json``
(its ``"gapt"`` algorithm names the arm) and ``args.json`` (its seed); any other directory with
TensorBoard event files below it (a DeepSpeed ``output_path``, a Hugging Face Trainer's ``runs/``) is
read as a ``gapt`` run with seed 0. The report writes one PNG per run (CE and validation CE, MBE per
layer and mean, gradient alignment and evaluation metrics when logged; compression phases as shaded
bands) and ``report.md``: per arm the mean ± std over seeds of each final metric, and the relative
change of every other arm against the ``ce`` baseline, if there is one.
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
from gapt_ds.runtime import HelpFormatter

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

    tb = path / "tensorboard" if (path / "tensorboard").is_dir() else path
    if not any(tb.rglob("events.out.tfevents.*")):
        raise ValueError(f"{path}: no TensorBoard event files in it or below it")
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


SHADE = dict(color="tab:orange", alpha=0.15, lw=0)  # compression phases


def _shade_phases(ax, phase: pd.Series) -> None:
    compress = phase == 2
    start = None
    steps = list(phase.index)
    for i, step in enumerate(steps):
        if compress.iloc[i] and start is None:
            start = step - 0.5
        if start is not None and (not compress.iloc[i] or i == len(steps) - 1):
            end = step - 0.5 if not compress.iloc[i] else step + 0.5
            ax.axvspan(start, end, **SHADE)
            start = None


NOT_EVAL_PANEL = {tags.eval_tag("val_ce"), tags.eval_tag("val_mbe")}  # val_ce is on the CE panel


def run_figure(run: Run, mbe_scale: str = "linear"):
    """The run's figure: CE, MBE (``mbe_scale``: linear | log), alignment and evaluation panels as logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    logged = set(run.scalars["tag"])
    evals = sorted(t for t in logged if t.startswith(tags.EVAL_PREFIX) and t not in NOT_EVAL_PANEL)
    groups = {"cos(∇CE, ∇MBE)": sorted(t for t in logged if t.startswith(tags.ALIGN)),
              "exact match": [t for t in evals if t.endswith("exact_match")],
              "evaluation": [t for t in evals if not t.endswith("exact_match")]}
    groups = {label: group for label, group in groups.items() if group}
    fig, axes = plt.subplots(2 + len(groups), 1, figsize=(9, 2.6 * (2 + len(groups))), sharex=True)
    ax = axes[0]
    ax.plot(run.series(tags.CE), label="train CE", lw=1)
    if tags.eval_tag("val_ce") in logged:
        ax.plot(run.series(tags.eval_tag("val_ce")), "o-", label="validation CE", ms=3)
    ax.set_ylabel("loss (nats)")
    ax = axes[1]
    for tag in sorted(t for t in logged if t.startswith(tags.MBE_LAYER)):
        ax.plot(run.series(tag), lw=0.8, alpha=0.7, label=tag.rsplit("/", 1)[-1])
    ax.plot(run.series(tags.MBE_MEAN), "k", lw=1.5, label="mean")
    ax.set_yscale(mbe_scale)
    ax.set_ylabel("MBE (nats" + (", log scale)" if mbe_scale == "log" else ")"))
    for ax, (label, group) in zip(axes[2:], groups.items()):
        for tag in group:
            ax.plot(run.series(tag), "o-" if tag in evals else "-", ms=3, lw=1, label=tag.split("/", 1)[1])
        if label.startswith("cos"):
            ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel(label)
    phase = run.series(tags.PHASE)
    for ax in axes:
        if not phase.empty:
            _shade_phases(ax, phase)
        handles, _ = ax.get_legend_handles_labels()
        extra = [Patch(**SHADE, label="compression phase")] if ax is axes[0] and (phase == 2).any() else []
        ax.legend(handles=handles + extra, loc="upper right", fontsize=7, ncol=4 if ax is axes[1] else 3)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(f"{run.path.name}: {run.recipe}, {run.arm}, seed {run.seed}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_run(run: Run, png: Path, mbe_scale: str = "linear") -> Path:
    import matplotlib.pyplot as plt

    fig = run_figure(run, mbe_scale)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_names(paths: list[Path]) -> list[str]:
    """A distinct file name per run: its folder's name, with parent folders added where names collide
    (``a/run`` and ``b/run`` give ``a-run`` and ``b-run``)."""
    parts = [p.resolve().parts[1:] for p in paths]  # without the root
    depth = [1] * len(paths)
    while True:
        names = ["-".join(ps[-d:]) for ps, d in zip(parts, depth)]
        clash = [i for i, n in enumerate(names) if depth[i] < len(parts[i])
                 and any(m == n and parts[j] != parts[i] for j, m in enumerate(names))]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # the same directory given twice
        seen[name] = seen.get(name, 0) + 1
        names[i] = name if seen[name] == 1 else f"{name}-{seen[name]}"
    return names


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {statistics.stdev(values):.2g}"


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
    p = argparse.ArgumentParser(prog="gapt-ds report", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (gapt-ds runs, or any directory with TensorBoard "
                   "event files below it)")
    p.add_argument("--out", required=True, help="output directory for report.md and the PNGs")
    p.add_argument("--mbe-scale", choices=["linear", "log"], default="linear",
                   help="y scale of the MBE panel (log: MBE near 0 after a collapse stays readable)")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        raise ValueError(f"not a directory: {', '.join(missing)}")
    runs = [load_run(Path(r)) for r in args.runs]  # every run is read before --out is created
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = plot_names([r.path for r in runs])
    pngs = [plot_run(r, out / f"{name}.png", args.mbe_scale) for r, name in zip(runs, names)]
    baseline = ("relative change of each arm's mean against the `ce` baseline." if any(r.arm == "ce" for r in runs)
                else "no baseline arm (`ce`) among these runs, so no relative change.")
    body = ["# gapt-ds report", "", comparison_table(runs), "",
            "Mean ± std over seeds of each run's last logged value (best = minimum over evaluations; one seed: "
            "its value); " + baseline, ""]
    body += [f"![{p.stem}]({p.name})" for p in pngs]
    md = out / "report.md"
    md.write_text("\n".join(body) + "\n")
    return md
