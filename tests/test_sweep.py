"""`gapt-ds sweep`: grid parsing, seed pairing in the report, and a real tiny sweep stopped mid-cell and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from gapt_ds.stats import paired
from gapt_ds.sweep import parse_grid, parse_seeds, plan
from gapt_ds.sweep_report import write_report

ROOT = Path(__file__).resolve().parents[1]


def test_grid_and_seeds_parsing_reports_every_problem():
    assert parse_grid(["gapt.mbe_weight=0.1,1", "--grid=x"][:1]) == [("gapt.mbe_weight", [0.1, 1])]
    assert parse_grid(["gapt.gate.improvement=absolute,relative", "--steps=10,20"]) == [
        ("gapt.gate.improvement", ["absolute", "relative"]), ("--steps", [10, 20])]
    with pytest.raises(ValueError) as err:
        parse_grid(["mbe_weight=1", "gapt.a", "gapt.b=1", "gapt.b=2"])
    assert "gapt.mbe_weight" in str(err.value) and "'gapt.a'" in str(err.value) and "given twice" in str(err.value)
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="distinct"):
        parse_seeds("0,0")


def test_baseline_is_shared_only_when_the_grid_cannot_change_it(tmp_path):
    args = Namespace(out=str(tmp_path), arms=["ce", "gapt"], baseline="ce", seeds=[0, 1])
    cells, shared = plan(args, parse_grid(["gapt.mbe_weight=0.1,1", "gapt.gate.improvement=absolute,relative"]))
    assert shared and len(cells) == 2 + 4 * 2
    assert [c.name for c in cells[:2]] == ["baseline/ce-s0", "baseline/ce-s1"]
    assert cells[2].name == "gapt.mbe_weight=0.1,gapt.gate.improvement=absolute/gapt-s0"
    cells, shared = plan(args, parse_grid(["gapt.layers=inner,all"]))  # the CE arm measures MBE on these layers
    assert not shared and len(cells) == 2 * 2 * 2


def fake_cell(cell, **summary):
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "summary.json").write_text(json.dumps({"step": 10, **summary}))


def test_report_pairs_cells_by_seed(tmp_path):
    args = Namespace(out=str(tmp_path), arms=["ce", "gapt"], baseline="ce", seeds=[0, 1, 2])
    grid = parse_grid(["gapt.mbe_weight=1"])
    cells, shared = plan(args, grid)
    base = {0: 1.0, 1: 5.0, 2: 3.0}
    arm = {0: 1.5, 1: 5.1, 2: 3.9}  # written in a shuffled order: pairing must follow the seed, not the order
    for c in sorted(cells, key=lambda c: -c.seed):
        fake_cell(c, val_ce=(base if c.arm == "ce" else arm)[c.seed])
    md = write_report(tmp_path, cells, grid, "ce", shared, None, {}, ["text-cpu"], [])
    rows = json.loads((tmp_path / "report" / "sweep.json").read_text())["paired"]["val_ce"]
    expect = paired([1.0, 5.0, 3.0], [1.5, 5.1, 3.9])
    assert len(rows) == 1 and rows[0]["n"] == 3
    assert rows[0]["mean"] == pytest.approx(0.5) and rows[0]["p_t"] == pytest.approx(expect.p_t)
    assert rows[0]["p_perm"] == pytest.approx(2 / 8)
    text = md.read_text()
    assert "| mbe_weight=1 | gapt | 3 |" in text.replace("gapt.mbe_weight", "mbe_weight") and "val_ce.png" in text
    assert (tmp_path / "report" / "val_ce.png").stat().st_size > 5_000


def sweep_cmd(out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "gapt_ds.cli", "sweep", "arithmetic", "--out", str(out), "--grid",
            "gapt.mbe_weight=0.5,2", "--seeds", "0", "--ranks", "1", "--", "--model", "tiny", "--seq-len", "32",
            "--steps", "120", "--save-every", "10", "--eval-every", "0", "--arith-eval", "16", "--eval-batches", "1",
            "--cache-dir", str(cache)]


@pytest.mark.distributed
def test_sweep_killed_mid_cell_resumes_only_the_missing_cells(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    first, second = out / "baseline" / "ce-s0", out / "gapt.mbe_weight=0.5" / "gapt-s0"
    proc = subprocess.Popen(sweep_cmd(out, cache), env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    try:  # stop the whole sweep (launcher and ranks) once the second cell has saved a checkpoint
        while not (second / "checkpoints" / "latest").is_file():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the second cell never saved a checkpoint"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    assert not (out / "gapt.mbe_weight=2").exists()
    first_mtime = (first / "summary.json").stat().st_mtime_ns

    again = subprocess.run(sweep_cmd(out, cache), env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "3 cells, 1 finished, 2 to run; estimate" in again.stdout
    assert "1/2 gapt.mbe_weight=0.5/gapt-s0 (resuming)" in again.stdout
    assert "2/2 gapt.mbe_weight=2/gapt-s0" in again.stdout
    assert (first / "summary.json").stat().st_mtime_ns == first_mtime  # the finished cell did not run again
    events = [json.loads(line).get("event") for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert "resume" in events
    third = out / "gapt.mbe_weight=2" / "gapt-s0"
    summaries = {c: json.loads((c / "summary.json").read_text()) for c in (first, second, third)}
    assert all(s["step"] == 120 for s in summaries.values())
    rows = json.loads((out / "report" / "sweep.json").read_text())["paired"]["id_answer_ce"]
    by_w = {r["point"]["gapt.mbe_weight"]: r for r in rows}
    assert by_w[0.5]["mean"] == pytest.approx(summaries[second]["id_answer_ce"] - summaries[first]["id_answer_ce"])
    record = json.loads((out / "sweep.json").read_text())["cells"]
    assert record["gapt.mbe_weight=0.5/gapt-s0"]["resumed"] and set(record) == {
        "baseline/ce-s0", "gapt.mbe_weight=0.5/gapt-s0", "gapt.mbe_weight=2/gapt-s0"}


def test_a_failed_cell_is_retried_once_then_reported(tmp_path, monkeypatch):
    import subprocess as sp

    from gapt_ds import sweep

    args = Namespace(out=str(tmp_path), arms=["ce"], baseline="ce", seeds=[0], recipe="text-cpu", config=None,
                     ranks=1, cell_seconds=None)
    cells, _ = plan(args, [])
    calls = []

    def flaky(cmd, **kwargs):  # the first launch loses its rendezvous port, the second trains
        calls.append(cmd)
        if len(calls) == 1:
            return sp.CompletedProcess(cmd, 1)
        cells[0].run_dir.mkdir(parents=True, exist_ok=True)
        (cells[0].run_dir / "summary.json").write_text("{}")
        return sp.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep.subprocess, "run", flaky)
    record = sweep.run_cells(args, cells, [])
    assert len(calls) == 2 and "baseline/ce-s0" in record["cells"]

    (cells[0].run_dir / "summary.json").unlink()
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, **kw: sp.CompletedProcess(cmd, 3))
    with pytest.raises(ValueError, match=r"baseline/ce-s0 failed \(exit 3\); see .*ce-s0.log"):
        sweep.run_cells(args, cells, [])
