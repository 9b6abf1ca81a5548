"""Resume on another number of ranks (gapt_ds/universal.py, resume.py, data/batches.py), end to end with
real runs: 2 ranks x micro-batch 4 -> 1 rank x 4 x 2 accumulation steps (ZeRO-1, converted offline by
`gapt-ds universal`) and 1 x 8 -> 2 x 4 (ZeRO-3, converted by `--resume` itself): the same global batch of
8 sequences. Against one uninterrupted 2-rank run: per-step CE and MBE within 1e-5 (fp32; measured
differences are ~4e-7), the same phases, the same gate state at the end, and the sequences each optimizer
step read (logged by every rank of the real runs) continue the same order, none repeated or skipped within
the epoch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gapt_ds import checkpoint
from gapt_ds.safe_load import safe_load
from runs import ROOT, bare_ranks, env, metrics, snapshot, torchrun, train_cmd, write_ds_config

pytestmark = pytest.mark.distributed
STEPS = ("--steps", "6", "--save-every", "3", "--eval-every", "0")
GLOBAL_BATCH = 8
TOL = 1e-5


def config(path: Path, stage: int, micro: int, gas: int = 1) -> Path:
    write_ds_config(path, stage=stage)
    cfg = json.loads(path.read_text())
    cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"] = micro, gas
    if stage == 3:
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every parameter
    path.write_text(json.dumps(cfg))
    return path


def train(root: Path, run: str, stage: int, ranks: int, *extra: str, gas: int = 1) -> subprocess.CompletedProcess:
    """`gapt-ds train` on ``ranks`` ranks x ``gas`` accumulation steps with the global batch of 8; every rank
    logs what it reads."""
    (root / f"{run}-data").mkdir(exist_ok=True)
    cfg = config(root / f"ds-z{stage}-w{ranks}-g{gas}.json", stage, GLOBAL_BATCH // ranks // gas, gas)
    proc = torchrun(train_cmd(root / run, cfg, root / "cache", *STEPS, *extra), nproc=ranks,
                    PYTHONPATH=str(ROOT / "tests" / "faults"), GAPT_TEST_DATA_LOG=str(root / f"{run}-data"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def steps_read(log_dir: Path) -> dict[int, list[int]]:
    """Optimizer step -> the sequence indices its micro-batches read on all ranks (sorted)."""
    out: dict[int, list[int]] = {}
    for path in log_dir.glob("rank*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            out.setdefault(row["consumed"] // GLOBAL_BATCH + 1, []).extend(row["indices"])
    return {step: sorted(idx) for step, idx in sorted(out.items())}


def gate_state(tag_dir: Path) -> dict:
    return safe_load(sorted(tag_dir.glob("*model_states.pt"))[0])["gapt"]


def assert_close(a, b, path="gate"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=TOL), path
    else:
        assert a == b, path  # phases, counters, settings: exactly


class Reference:
    """One uninterrupted 2-rank ZeRO-1 run of 6 steps (checkpoints step3, step6)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        train(root, "ref", 1, 2)
        self.run, self.metrics, self.read = root / "ref", metrics(root / "ref"), steps_read(root / "ref-data")

    def assert_continues(self, run: Path, read: dict[int, list[int]], steps: list[int]) -> None:
        got = metrics(run, after_resume=True)
        assert sorted(got) == steps
        for s in steps:
            for key in ("ce", "mbe_mean"):
                assert got[s][key] == pytest.approx(self.metrics[s][key], abs=TOL), (s, key)
            assert (got[s]["phase"], got[s]["next_phase"]) == (self.metrics[s]["phase"], self.metrics[s]["next_phase"])
            assert got[s]["sequences"] == s * GLOBAL_BATCH
        assert {s: read[s] for s in steps} == {s: self.read[s] for s in steps}  # the same sequences per step
        assert_close(gate_state(run / "checkpoints" / "step6"), gate_state(self.run / "checkpoints" / "step6"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    ref = Reference(tmp_path_factory.mktemp("universal"))
    epoch = [i for s in range(1, 7) for i in ref.read[s]]  # 48 of the epoch's sequences
    assert len(epoch) == len(set(epoch)) == 6 * GLOBAL_BATCH  # none read twice
    return ref


def from_step3(reference: Reference, name: str) -> Path:
    run = reference.root / name
    shutil.copytree(reference.run, run)
    shutil.rmtree(run / "checkpoints" / "step6")
    (run / "checkpoints" / "latest").write_text("step3")
    return run


def gapt_ds(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gapt_ds.cli", *args], env=env(), capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_two_ranks_to_one_with_accumulation_after_an_offline_conversion(reference):
    run = from_step3(reference, "2to1")
    converted = gapt_ds("universal", str(run / "checkpoints"))
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert converted.stdout.strip().endswith(str(run / "checkpoints" / "step3" / "universal"))
    assert (run / "checkpoints" / "step3" / "universal" / checkpoint.COMPLETE).is_file()
    again = gapt_ds("universal", str(run / "checkpoints"), "--tag", "step3")
    assert again.returncode == 0 and "already complete" in again.stdout

    proc = train(reference.root, "2to1", 1, 1, "--resume", gas=2)  # a micro-batch is now half the reference's
    assert ("resuming step3, written by 2 rank(s) x micro-batch 4 x 1 accumulation, on 1 x 4 x 2: the same 8 "
            "sequences per optimizer step") in proc.stdout
    assert "converting" not in proc.stdout  # the offline conversion is used
    reference.assert_continues(run, steps_read(reference.root / "2to1-data"), [4, 5, 6])
    event = next(json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if '"resume"' in r)
    assert event == {"event": "resume", "step": 3, "tag": "step3", "sequences": 24, "from_layout": [2, 4, 1],
                     "universal": True}


def test_one_rank_to_two_under_zero3_converts_by_itself(reference):
    root = reference.root
    train(root, "1to2", 3, 1, "--steps", "3")
    one_rank = metrics(root / "1to2")
    for s in (1, 2, 3):  # 1 rank x 8 trains as 2 ranks x 4 did
        assert one_rank[s]["ce"] == pytest.approx(reference.metrics[s]["ce"], abs=TOL)
    proc = train(root, "1to2", 3, 2, "--resume")
    tag = root / "1to2" / "checkpoints" / "step3"
    assert f"converting {tag} to DeepSpeed's universal checkpoint form" in proc.stdout
    assert proc.stdout.count("converted step3 in") == 1  # by rank 0 only
    assert not (tag.parent / "latest_universal").exists() and not (tag / "latest_universal").exists()
    reference.assert_continues(root / "1to2", steps_read(root / "1to2-data"), [4, 5, 6])


def test_another_global_batch_is_refused_with_the_other_differences_and_changes_nothing(reference):
    run = from_step3(reference, "refused")
    before = snapshot(run)
    cfg = config(reference.root / "ds-z1-w1-micro4.json", 1, 4)
    (rank,) = bare_ranks(train_cmd(run, cfg, reference.root / "cache", *STEPS, "--resume", "--seed", "1"), world=1)
    assert rank.returncode == 2, rank.stderr[-3000:]
    msg = rank.stderr[rank.stderr.index("error: --resume"):]
    assert "  seed: 0 -> 1  (fixed)" in msg  # the fingerprint still guards everything else
    assert ("global batch: the checkpoint trained 2 rank(s) x micro-batch 4 x 1 accumulation step(s) = 8 sequences "
            "per optimizer step; this run has 1 x 4 x 1 = 4. The global batch must stay 8 on resume: set "
            "gradient_accumulation_steps 2 or train_micro_batch_size_per_gpu 8") in msg
    assert snapshot(run) == before  # no universal form, no args.json, nothing


def test_gapt_ds_universal_names_what_it_cannot_convert(tmp_path):
    from gapt_ds import universal

    tag = tmp_path / "step2"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")  # a ZeRO-0 tag: no optimizer partitions
    (tag / checkpoint.COMPLETE).write_text(json.dumps({"step": 2}))
    with pytest.raises(ValueError, match="step2 has no ZeRO optimizer partitions .*: any number of ranks loads it"):
        universal.main([str(tmp_path), "--tag", "step2"])
    with pytest.raises(ValueError, match="checkpoint 'step9' does not exist"):
        universal.main([str(tmp_path), "--tag", "step9"])
