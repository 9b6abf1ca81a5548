"""The DeepSpeed-owned keys are checked before DeepSpeed starts: one line per problem, all at once."""

import json
import subprocess

import pytest

from gapt_ds.ds_config_check import check_ds_config, deepspeed_top_level_keys
from test_train import BIN, ROOT, env, run, train_args, write_ds_config

BASE = json.loads((ROOT / "ds_configs" / "cpu_default.json").read_text())

CASES = [  # (change to the shipped CPU config, expected fragment)
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu: must be an integer >= 1, got 0"),
    ({"train_micro_batch_size_per_gpu": "16"}, "got the string '16': write 16 without quotes"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decya": 0.1}}},
     "optimizer.params.weight_decya: DeepSpeed's adamw takes no such parameter (did you mean 'weight_decay'?)"),
    ({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_step": 10}}},
     "scheduler.params.warmup_num_step: DeepSpeed's WarmupLR takes no such parameter (did you mean "
     "'warmup_num_steps'?)"),
    ({"scheduler": {"type": "WarmupCosine", "params": {}}}, "(did you mean 'WarmupCosineLR'?)"),
    ({"gradient_acumulation_steps": 4},
     "gradient_acumulation_steps: unknown top-level key, DeepSpeed would ignore it (did you mean "
     "'gradient_accumulation_steps'?)"),
    ({"gradient_clipping": "auto"}, 'gradient_clipping: "auto" is a Hugging Face Trainer placeholder'),
    ({"zero_optimization": {"stage": 2, "overlap_comn": True}}, "DeepSpeed rejects it: 1 validation error"),
    ({"train_batch_size": 64},
     "train_batch_size 64 != train_micro_batch_size_per_gpu 8 x gradient_accumulation_steps 1 x 2 ranks"),
]


@pytest.mark.parametrize("change,fragment", CASES, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(CASES)])
def test_each_bad_deepspeed_key_gets_one_clear_line(change, fragment):
    cfg = {**json.loads(json.dumps(BASE)), "train_micro_batch_size_per_gpu": 8, **change}
    with pytest.raises(ValueError) as err:
        check_ds_config(cfg, "ds.json", world_size=2)
    assert fragment in str(err.value) and str(err.value).startswith("invalid DeepSpeed config in ds.json (1 problem)")


def test_known_keys_come_from_deepspeed_and_shipped_configs_pass():
    from deepspeed.runtime import constants

    keys = deepspeed_top_level_keys()
    assert {constants.GRADIENT_ACCUMULATION_STEPS, "zero_optimization", "bf16", "tensorboard",
            "activation_checkpointing", "flops_profiler"} <= keys
    for path in sorted((ROOT / "ds_configs").rglob("*.json")):
        check_ds_config(json.loads(path.read_text()), str(path), world_size=2)
    cfg = {**BASE, "gradient_acumulation_steps": 2, "train_micro_batch_size_per_gpu": "auto"}
    with pytest.raises(ValueError, match=r"\(2 problems\)"):  # all at once
        check_ds_config(cfg, world_size=2)


def test_a_config_error_is_printed_once_and_every_rank_exits_non_zero(tmp_path):
    """Both ranks of a 2-rank job (as a launcher starts them) reject the config before any collective:
    rank 0 prints the line, rank 1 stays silent, both exit 2."""
    config = write_ds_config(tmp_path / "ds.json")
    config.write_text(json.dumps({**json.loads(config.read_text()), "gradient_acumulation_steps": 2}))
    cmd = [str(BIN / "python"), "-m", "gapt_ds.cli", "train", *train_args(tmp_path, "run", config=config)]
    procs = [subprocess.run(cmd, env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1"),
                            capture_output=True, text=True, timeout=120, cwd=ROOT) for r in (0, 1)]
    assert [p.returncode for p in procs] == [2, 2]
    assert [p.stderr.count("did you mean 'gradient_accumulation_steps'") for p in procs] == [1, 0], procs[0].stderr
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_val_every_one_is_refused_with_the_reason(tmp_path):
    py = [str(BIN / "python"), "-m", "gapt_ds.cli", "train"]
    proc = run([*py, *train_args(tmp_path, "run", "--val-every", "1")])
    assert proc.returncode == 2 and "--val-every 1 would put every document in the validation split" in proc.stderr
