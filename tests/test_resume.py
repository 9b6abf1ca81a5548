"""`--resume` refuses silent changes: every difference listed (key path, old, new), nothing in the run
directory touched; `--allow-config-change` accepts them and logs them."""

import json
import warnings
from pathlib import Path

import pytest

from gapt_ds import resume
from runs import bare_ranks, metrics, snapshot, torchrun

FP = {"data": "arithmetic", "tokenizer": "char", "seq_len": 32, "world_size": 2, "micro_batch": 4, "grad_accum": 1,
      "seed": 0, "model": json.dumps({"n_layer": 4, "n_embd": 32, "resid_pdrop": 0.0})}


def test_diff_lists_every_nested_difference_with_its_key_path():
    old = {"optimizer": {"params": {"lr": 1e-3, "betas": [0.9, 0.95]}}, "gapt": {"gate": {"patience_memorize": 3}}}
    new = {"optimizer": {"params": {"lr": 1e-2, "betas": [0.9, 0.95]}}, "gapt": {"gate": {}}, "bf16": {"enabled": True}}
    changes = resume.diff(old, new)
    assert [(p, o, n) for p, o, n in changes if p != "gapt.gate.patience_memorize"] == [
        ("bf16", changes[0][1], {"enabled": True}), ("optimizer.params.lr", 1e-3, 1e-2)]
    assert "gapt.gate.patience_memorize: 3 -> (unset)" in resume.describe(changes)


def test_only_logging_budget_and_path_settings_may_change_freely():
    cfg = {"optimizer": {"params": {"lr": 1e-3}}, "tensorboard": {"output_path": "a"}, "steps_per_print": 10,
           "gapt": {"alignment_every": 0, "mbe_weight": 1.0}}
    args = {"steps": 10, "save_every": 5, "eval_every": 5, "no_progress": False, "run_dir": "a", "dropout": 0.0,
            "eval_batches": 8, "val_every": 50}
    new_cfg = {**cfg, "tensorboard": {"output_path": "b"}, "steps_per_print": 1,
               "gapt": {"alignment_every": 10, "mbe_weight": 2.0}}
    new_args = {**args, "steps": 20, "save_every": 2, "eval_every": 1, "no_progress": True, "run_dir": "b",
                "val_every": 10, "keep_last": 3}  # keep_last: an option the old run did not have
    changes = resume.config_changes(resume.settings(cfg, args), resume.settings(new_cfg, new_args))
    assert changes == [("ds_config.gapt.mbe_weight", 1.0, 2.0), ("args.val_every", 50, 10)]


def test_fixed_settings_cannot_be_accepted_and_the_message_is_short(tmp_path):
    current = {**FP, "world_size": 1, "model": json.dumps({"n_layer": 6, "n_embd": 32, "resid_pdrop": 0.1})}
    saved = resume.settings({"optimizer": {"params": {"lr": 1e-3}}}, {"steps": 8})
    now = resume.settings({"optimizer": {"params": {"lr": 1e-2}}}, {"steps": 8})
    run_state = {"fingerprint": FP, "settings": saved}
    with pytest.raises(ValueError) as err:
        resume.check(tmp_path, run_state, current, now, allow_change=True)
    lines = str(err.value).splitlines()
    assert lines[1:] == ["  model.n_layer: 4 -> 6  (fixed)", "  model.resid_pdrop: 0.0 -> 0.1",
                         "  ds_config.optimizer.params.lr: 0.001 -> 0.01", f"  {GLOBAL_BATCH_8_TO_4}",
                         "Settings marked (fixed) can never change on resume: use a new --run-dir."]
    with pytest.warns(UserWarning, match="optimizer.params.lr: 0.001 -> 0.01"):
        accepted = resume.check(tmp_path, run_state, FP, now, allow_change=True)
    assert resume.as_records(accepted) == [{"key": "ds_config.optimizer.params.lr", "old": 1e-3, "new": 1e-2}]


GLOBAL_BATCH_8_TO_4 = (
    "global batch: the checkpoint trained 2 rank(s) x micro-batch 4 x 1 accumulation step(s) = 8 sequences per "
    "optimizer step; this run has 1 x 4 x 1 = 4. The global batch must stay 8 on resume: set "
    "gradient_accumulation_steps 2 or train_micro_batch_size_per_gpu 8 (train_batch_size, if set, 8)")


def test_world_size_micro_batch_and_accumulation_may_change_together_when_the_global_batch_stays():
    saved = resume.settings({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1}, {"steps": 8})
    run_state = {"fingerprint": FP, "settings": saved}
    for world, micro, gas in [(1, 8, 1), (1, 4, 2), (4, 1, 2), (2, 2, 2), (8, 1, 1)]:
        now = resume.settings({"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": gas,
                               "train_batch_size": world * micro * gas}, {"steps": 8})
        fp = {**FP, "world_size": world, "micro_batch": micro, "grad_accum": gas}
        assert resume.check(Path("step4"), run_state, fp, now, allow_change=False) == []  # no flag needed
    stay = "The global batch must stay 8 on resume:"
    cases = [((3, 4, 1), f"3 x 4 x 1 = 12. {stay} no micro-batch x accumulation split of 8 sequences over 3 ranks "
                         "exists: use a number of ranks that divides 8"),
             ((4, 4, 1), f"4 x 4 x 1 = 16. {stay} set train_micro_batch_size_per_gpu 2"),
             ((1, 3, 1), f"1 x 3 x 1 = 3. {stay} set train_micro_batch_size_per_gpu 8")]
    for (world, micro, gas), message in cases:
        fp = {**FP, "world_size": world, "micro_batch": micro, "grad_accum": gas, "seq_len": 16}
        with pytest.raises(ValueError) as err:
            resume.check(Path("step4"), run_state, fp, saved, allow_change=True)
        assert message in str(err.value) and "  seq_len: 32 -> 16  (fixed)" in str(err.value)  # reported together
    nvme = resume.settings({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}}, {})
    with pytest.raises(ValueError, match=r"world size 2 -> 1: zero_optimization.offload_optimizer is on NVMe"):
        resume.check(Path("step4"), {"fingerprint": FP, "settings": nvme}, {**FP, "world_size": 1, "micro_batch": 8},
                     nvme, allow_change=False)


def test_a_new_split_is_announced_and_a_changed_global_mbe_micro_batch_is_warned(capsys):
    fp = {**FP, "world_size": 1, "micro_batch": 4, "grad_accum": 2}
    with pytest.warns(UserWarning, match=r'mbe_mode "global" .*: 8 sequences before, 4 now, so the MBE term changes'):
        resume._announce_layout(Path("step4"), (2, 4, 1), fp, {"gapt": {"mbe_mode": "global"}})
    assert ("resuming step4, written by 2 rank(s) x micro-batch 4 x 1 accumulation, on 1 x 4 x 2: the same 8 "
            "sequences per optimizer step") in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resume._announce_layout(Path("step4"), (2, 4, 1), fp, {"gapt": {"mbe_mode": "patch"}})
        resume._announce_layout(Path("step4"), (2, 4, 1), {**fp, "micro_batch": 8, "grad_accum": 1},
                                {"gapt": {"mbe_mode": "global"}})


def test_reseed_is_deterministic_per_seed_step_and_rank():
    import torch

    from gapt_ds.rng import reseed

    def draw(*key):
        reseed(*key)
        return torch.rand(3).tolist()

    assert draw(0, 3, 1) == draw(0, 3, 1)
    assert len({tuple(draw(*k)) for k in [(0, 3, 1), (0, 3, 0), (0, 4, 1), (1, 3, 1)]}) == 4


CHANGED = {"mbe_weight": 0.25, "patch_size": 4, "mbe_mode": "global", "gate": {"patience_memorize": 7}}


@pytest.mark.distributed
def test_a_resume_with_changed_settings_is_refused_on_every_rank_and_changes_nothing(base_run, tmp_path):
    run = base_run.copy(tmp_path / "run")
    config = json.loads(base_run.config.read_text())
    config["optimizer"]["params"]["lr"] *= 10
    config["zero_optimization"]["stage"] = 2
    config["gapt"] = {**config["gapt"], **CHANGED, "gate": {**config["gapt"]["gate"], **CHANGED["gate"]}}
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(config))
    before = snapshot(run)
    ranks = bare_ranks(base_run.cmd(run, "--steps", "10", "--resume", config=changed))
    assert [r.returncode for r in ranks] == [2, 2], ranks[0].stderr[-3000:]
    msg = ranks[0].stderr[ranks[0].stderr.index("error: --resume"):]
    lr = json.loads(base_run.config.read_text())["optimizer"]["params"]["lr"]
    for line in (f"ds_config.optimizer.params.lr: {lr} -> {lr * 10}", "ds_config.zero_optimization.stage: 1 -> 2",
                 "ds_config.gapt.mbe_weight: 0.5 -> 0.25", "ds_config.gapt.patch_size: (unset) -> 4",
                 'ds_config.gapt.mbe_mode: (unset) -> "global"', "ds_config.gapt.gate.patience_memorize: 3 -> 7",
                 "--allow-config-change"):
        assert line in msg, (line, msg)
    assert len(msg.splitlines()) <= 10 and "n_embd" not in msg  # the changes only, no config dumps
    assert "error" not in ranks[1].stderr  # printed once, by rank 0
    assert snapshot(run) == before  # not even args.json or a TensorBoard file


@pytest.mark.distributed
def test_allow_config_change_resumes_and_logs_the_changes(base_run, tmp_path):
    run = base_run.copy(tmp_path / "run")
    config = json.loads(base_run.config.read_text())
    config["optimizer"]["params"]["lr"] /= 2
    config["gapt"]["gate"]["patience_compress"] = 9
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(config))
    proc = torchrun(base_run.cmd(run, "--steps", "10", "--save-every", "5", "--eval-every", "5", "--resume",
                                 "--allow-config-change", config=changed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--allow-config-change: resuming" in proc.stderr and "patience_compress: 3 -> 9" in proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if r.get("event") == "config_change")
    assert logged["step"] == 8 and {c["key"] for c in logged["changes"]} == {
        "ds_config.optimizer.params.lr", "ds_config.gapt.gate.patience_compress"}
    assert sorted(metrics(run, after_resume=True)) == [9, 10]
