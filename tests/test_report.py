"""gapt-ds report on real TensorBoard event files: any TensorBoard directory, distinct plot names, the figure's
panels and legend, the table's wording, and no --out folder when it fails."""

import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from gapt_ds import report


def write_run(path: Path, arm: str = "gapt", seed: int = 0, tb_subdir: str = "tensorboard", mbe_floor: float = 0.0):
    """A run as gapt-ds train writes it: 8 steps, compression at steps 4-6, two evaluations."""
    with SummaryWriter(str(path / tb_subdir)) as w:
        for step in range(1, 9):
            w.add_scalar("gapt/ce", 3.0 - 0.1 * step, step)
            w.add_scalar("gapt/phase", 2 if 4 <= step <= 6 else 1, step)
            w.add_scalar("gapt/mbe_mean", mbe_floor + 1.0 / step, step)
            w.add_scalar("gapt/mbe/layer_1", mbe_floor + 1.0 / step, step)
        for step in (4, 8):
            w.add_scalar("eval/val_ce", 3.0 - 0.05 * step, step)
            w.add_scalar("eval/id_exact_match", 0.1 * step, step)
            w.add_scalar("eval/id_answer_ce", 2.0 - 0.1 * step, step)
    if tb_subdir == "tensorboard":
        (path / "ds_config.json").write_text(json.dumps({"gapt": {"algorithm": arm}}))
        (path / "args.json").write_text(json.dumps({"seed": seed, "recipe": "arithmetic"}))
    return path


def test_runs_with_the_same_folder_name_get_distinct_plots_and_one_seed_has_no_spread(tmp_path):
    a = write_run(tmp_path / "a" / "run", arm="ce")
    b = write_run(tmp_path / "b" / "run", arm="gapt")
    md = report.main([str(a), str(b), "--out", str(tmp_path / "rep")]).read_text()
    assert (tmp_path / "rep" / "a-run.png").stat().st_size > 10_000
    assert (tmp_path / "rep" / "b-run.png").stat().st_size > 10_000
    assert not (tmp_path / "rep" / "run.png").exists()
    assert "±" not in md.split("Mean ±")[0]  # one seed per arm: a value, no "± 0"
    assert "| gapt vs ce |" in md and "against the `ce` baseline" in md


def test_plot_names():
    assert report.plot_names([Path("/x/a/run"), Path("/x/b/run"), Path("/x/c")]) == ["a-run", "b-run", "c"]
    assert report.plot_names([Path("/x/a"), Path("/x/a")]) == ["a", "a-2"]


def test_any_tensorboard_directory_and_no_baseline(tmp_path):
    hf = write_run(tmp_path / "hf_out", tb_subdir="runs/Nov25_08-00-00_host")  # a Trainer's output_dir
    md = report.main([str(hf), "--out", str(tmp_path / "rep")]).read_text()
    assert "| gapt | 1 |" in md and "no baseline arm (`ce`)" in md and "vs ce" not in md
    assert (tmp_path / "rep" / "hf_out.png").is_file()


def test_figure_labels_compression_plots_evaluations_and_offers_log_mbe(tmp_path):
    run = report.load_run(write_run(tmp_path / "run", mbe_floor=0.001))
    fig = report.run_figure(run, mbe_scale="log")
    ce_ax, mbe_ax, exact_ax, eval_ax = fig.axes
    assert "compression phase" in [t.get_text() for t in ce_ax.get_legend().get_texts()]
    assert mbe_ax.get_yscale() == "log" and "log scale" in mbe_ax.get_ylabel()
    assert exact_ax.get_ylabel() == "exact match" and [t.get_text() for t in exact_ax.get_legend().get_texts()] \
        == ["id_exact_match"]
    assert [t.get_text() for t in eval_ax.get_legend().get_texts()] == ["id_answer_ce"]
    assert report.run_figure(run).axes[1].get_yscale() == "linear"


def test_a_failing_report_creates_no_out_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        report.main([str(write_run(tmp_path / "ok")), str(empty), "--out", str(tmp_path / "rep")])
    assert not (tmp_path / "rep").exists()
