"""`gapt-ds train` end to end: real launchers (deepspeed, torchrun, loopback 2-node), SIGKILL + exact resume,
bad arguments, data and checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tbparse import SummaryReader

from dist import free_port
from gapt_ds.train import check_compile_toolchain, cpu_compiler, parse_args

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST_GAPT = {"mbe_weight": 0.5, "gate": {"patience_memorize": 3, "patience_compress": 3}}


def write_ds_config(path: Path, stage: int = 1, **gapt) -> Path:
    cfg = json.loads((ROOT / "ds_configs" / "cpu_default.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = 4
    cfg["zero_optimization"] = {"stage": stage}
    cfg["gapt"] = {**FAST_GAPT, **gapt}
    path.write_text(json.dumps(cfg))
    return path


def env(**extra) -> dict:
    e = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
             MASTER_PORT=str(free_port()), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    e.update(extra)
    return e


def train_args(tmp_path: Path, run: str, *extra: str, config: Path = None) -> list[str]:
    config = config or write_ds_config(tmp_path / "ds.json")
    return ["--deepspeed_config", str(config), "--data", "arithmetic", "--model", "tiny", "--seq-len", "32",
            "--run-dir", str(tmp_path / run), "--cache-dir", str(tmp_path / "cache"), "--eval-batches", "2",
            "--arith-eval", "32", "--no-progress", *extra]


def run(cmd: list[str], timeout: int = 240, **env_extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(**env_extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc


def metrics(run_dir: Path, after_resume: bool = False) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if after_resume:
        rows = rows[max(i for i, r in enumerate(rows) if r.get("event") == "resume") + 1 :]
    return {r["step"]: r for r in rows if "phase" in r}


def test_arguments_are_validated_all_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        parse_args(["--deepspeed_config", str(tmp_path / "nope.json"), "--seq-len", "0", "--model", "huge",
                    "--dropout", "1.5", "--resume", "--run-dir", str(tmp_path)])
    msg = str(err.value)
    for fragment in ("--seq-len must be >= 1", "--model 'huge' is not a preset", "--dropout must be in [0, 1)",
                     "--deepspeed-config: file not found", "--resume: no checkpoint"):
        assert fragment in msg


def test_deepspeed_launcher_two_ranks_logs_evaluates_and_checkpoints(tmp_path):
    config = write_ds_config(tmp_path / "ds_align.json", alignment_every=6)
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "gapt_ds.train",
           *train_args(tmp_path, "run", "--steps", "24", "--eval-every", "12", "--save-every", "12", config=config)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    steps = metrics(run_dir)
    assert sorted(steps) == list(range(1, 25))
    phases = [steps[s]["phase"] for s in sorted(steps)]
    assert {1, 2} <= set(phases)  # the fast gate switches phases within 24 steps
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 24
    for key in ("val_ce", "val_mbe", "id_answer_ce", "ood_answer_ce", "id_exact_match", "ood_exact_match"):
        assert key in summary
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step24"
    tags = set(SummaryReader(str(run_dir / "tensorboard")).scalars["tag"])
    assert {"gapt/ce", "gapt/phase", "gapt/mbe_mean", "eval/val_ce", "eval/ood_answer_ce", "Train/Samples/lr",
            "gapt/align/all", "gapt/align/block_1"} <= tags
    align = SummaryReader(str(run_dir / "tensorboard")).scalars.query("tag == 'gapt/align/all'")
    assert sorted(align["step"]) == [1, 7, 13, 19]  # measured on the first micro-batch of steps 0, 6, 12, 18


def test_sigkill_then_resume_gives_the_uninterrupted_losses_bitwise(tmp_path):
    extra = ("--steps", "30", "--save-every", "4", "--eval-every", "0", "--dropout", "0.1")
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port"]
    full = run([*torchrun, str(free_port()), "-m", "gapt_ds.train", *train_args(tmp_path, "full", *extra)])
    assert full.returncode == 0, full.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    cmd = [*torchrun, str(free_port()), "-m", "gapt_ds.train", *train_args(tmp_path, "killed", *extra)]
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = metrics(killed_dir) if (killed_dir / "metrics.jsonl").exists() else {}
        if max(done, default=0) >= 6:
            break
        time.sleep(0.05)
    # SIGKILL the launcher and every worker at once (torchrun's workers are not in its process group)
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    killed_at = max(metrics(killed_dir))
    assert 6 <= killed_at < 30, killed_at  # it really died mid-run, after the step-4 checkpoint
    resumed = run([*torchrun, str(free_port()), "-m", "gapt_ds.train", *train_args(tmp_path, "killed", *extra),
                   "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = metrics(killed_dir, after_resume=True)
    ref = metrics(tmp_path / "full")
    latest_ckpt = int((killed_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    resumed_from = min(after) - 1
    assert resumed_from % 4 == 0 and resumed_from <= killed_at and sorted(after) == list(range(resumed_from + 1, 31))
    assert latest_ckpt == 30
    for s in after:
        for key in ("ce", "mbe", "phase", "lr"):
            assert after[s][key] == ref[s][key], (s, key)  # exact equality of the logged floats


def test_loopback_two_node_torchrun_rehearsal(tmp_path):
    args = train_args(tmp_path, "multinode", "--steps", "6", "--eval-every", "0", "--save-every", "0")
    port = str(free_port())
    procs = [subprocess.Popen(["bash", str(ROOT / "launch" / "torchrun_multinode.sh"), *args], cwd=ROOT,
                              env=env(NNODES="2", NODE_RANK=str(n), GPUS_PER_NODE="1", MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port, DS_CONFIG=str(write_ds_config(tmp_path / "ds.json", stage=2))),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    summary = json.loads((tmp_path / "multinode" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 6


def test_single_process_run_and_clear_errors_for_bad_inputs(tmp_path):
    py = [sys.executable, "-m", "gapt_ds.cli", "train"]
    ok = run([*py, *train_args(tmp_path, "single", "--steps", "4", "--save-every", "2", "--eval-every", "0")])
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "single" / "summary.json").read_text())["world_size"] == 1

    def fails(*extra, run_dir="single"):
        proc = run([*py, *train_args(tmp_path, run_dir, *extra)])
        assert proc.returncode == 2, proc.stderr[-3000:]
        return proc.stderr

    assert "other settings" in fails("--steps", "6", "--seq-len", "64", "--resume") and "seq_len" in fails(
        "--steps", "6", "--seq-len", "64", "--resume")
    assert "no file matches" in fails("--data", str(tmp_path / "missing" / "*.txt"), run_dir="bad-data")
    assert "does not split into MBE windows" in fails("--seq-len", "4", run_dir="short")
    tag_dir = tmp_path / "single" / "checkpoints" / "step4"
    optim = next(tag_dir.glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:100])
    assert f"cannot read {optim}: it is truncated or corrupt" in fails("--steps", "6", "--resume")  # before loading
    model_states = tag_dir / "mp_rank_00_model_states.pt"
    model_states.write_bytes(model_states.read_bytes()[:100])
    assert "truncated or corrupt" in fails("--steps", "6", "--resume")  # found before anything is loaded


@pytest.mark.skipif(cpu_compiler() is None, reason="no C++ compiler: torch.compile's inductor cannot build CPU kernels")
def test_compile_and_activation_checkpointing_train_as_eager(tmp_path):
    """One process, ZeRO-1: `--compile --activation-checkpointing` gives eager's CE, MBE and phases through
    memorization and compression steps, the same alignment cosines and the same evaluation (float32 tolerance:
    inductor fuses ops), with no graph break in training, alignment measurement or evaluation."""
    config = write_ds_config(tmp_path / "ds.json", gate={"patience_memorize": 2, "patience_compress": 2},
                             alignment_every=3)
    py = [sys.executable, "-m", "gapt_ds.cli", "train"]
    common = ("--steps", "6", "--eval-every", "0", "--save-every", "0")
    eager = run([*py, *train_args(tmp_path, "eager", *common, config=config)])
    assert eager.returncode == 0, eager.stderr[-3000:]
    fast = run([*py, *train_args(tmp_path, "fast", *common, "--compile", "--activation-checkpointing", config=config)],
               timeout=600, TORCH_LOGS="graph_breaks")  # cold compilation: ~40 s idle, minutes under load
    assert fast.returncode == 0, fast.stderr[-3000:]
    assert "Graph break" not in fast.stderr, fast.stderr[-3000:]  # the hooks and the checkpoints compile whole
    a, b = metrics(tmp_path / "eager"), metrics(tmp_path / "fast")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [a[s]["phase"] for s in a] == [b[s]["phase"] for s in b] and 2 in [a[s]["phase"] for s in a]
    for s in a:
        assert b[s]["ce"] == pytest.approx(a[s]["ce"], rel=1e-5), s
        assert b[s]["mbe"] == pytest.approx(a[s]["mbe"], rel=1e-5), s
    evals = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()][-1]
             for r in ("eager", "fast")]
    assert evals[0]["event"] == evals[1]["event"] == "eval"
    assert evals[1]["val_ce"] == pytest.approx(evals[0]["val_ce"], rel=1e-5)
    assert evals[1]["val_mbe"] == pytest.approx(evals[0]["val_mbe"], rel=1e-5)
    align = [SummaryReader(str(tmp_path / r / "tensorboard")).scalars.query("tag.str.startswith('gapt/align/')")
             .sort_values(["step", "tag"]) for r in ("eager", "fast")]  # the monitor's autograd.grad, compiled
    assert len(align[0]) == len(align[1]) > 0 and list(align[0]["tag"]) == list(align[1]["tag"])
    assert list(align[1]["value"]) == pytest.approx(list(align[0]["value"]), abs=1e-4)


def test_compile_without_a_cpu_compiler_is_refused(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("CXX", "no-such-compiler-gapt")
    with pytest.raises(ValueError, match="no C\\+\\+ compiler"):
        check_compile_toolchain()
