"""Each DeepSpeed internal gapt-ds relies on (gapt_ds/deepspeed_compat.py, gapt_ds/skip.py), checked
against the installed DeepSpeed: a release that changes one fails here, by name."""

import inspect
import json
from pathlib import Path

import pytest

import engine_workers as w
from dist import run_ranks
from gapt_ds import deepspeed_compat


def config_from_args_worker(rank: int, path: str) -> dict:
    import argparse

    import gapt_ds

    model = w.tiny_model()
    args = argparse.Namespace(deepscale_config=path, local_rank=rank)  # gapt-ds does not read this name itself
    engine, *_ = gapt_ds.initialize(args=args, model=model, model_parameters=model.parameters())
    return {"algorithm": engine.algorithm.name, "layers": engine.mbe_layer_ids,
            "parsed": deepspeed_compat.parsed_config(engine)}


@pytest.mark.distributed
def test_parsed_config_is_the_config_deepspeed_found_by_itself(tmp_path):
    cfg = w.ds_config(gapt={"algorithm": "ce", "layers": [2]})
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    (r0,) = run_ranks(config_from_args_worker, tmp_path / "out", world=1, path=str(path))
    assert r0["parsed"]["gapt"] == cfg["gapt"]
    assert r0["algorithm"] == "ce" and r0["layers"] == [2]


def test_initialize_tags_parameters_through_set_optimizer_flags():
    import deepspeed

    assert callable(deepspeed.set_optimizer_flags)
    assert "set_optimizer_flags(" in inspect.getsource(deepspeed.initialize)


def test_the_shm_comm_op_can_be_switched_off():
    import deepspeed.ops

    assert "deepspeed_shm_comm" in deepspeed.ops.__compatible_ops__
    deepspeed_compat.skip_cpu_shm_build()
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False


def test_autocast_context_exists():
    from deepspeed.runtime.torch_autocast import autocast_if_enabled

    assert list(inspect.signature(autocast_if_enabled).parameters) == ["engine"]


def test_the_overflow_paths_skip_py_uses_exist():
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    for name in ("_overflow_check_and_loss_scale_update", "_loss_scale_update_and_overflow_cleanup"):
        assert callable(getattr(DeepSpeedZeroOptimizer_Stage3, name, None)), name
    assert callable(getattr(DeepSpeedZeroOptimizer, "has_overflow", None))
    assert "check_grad_overflow" in inspect.signature(DeepSpeedZeroOptimizer.__init__).parameters
    for name in ("clear_hp_grads", "clear_lp_grads"):
        assert callable(getattr(BF16_Optimizer, name, None)), name


def test_the_attributes_teardown_releases_exist():
    from deepspeed.monitor.monitor import MonitorMaster
    from deepspeed.monitor.tensorboard import TensorBoardMonitor
    from deepspeed.runtime.engine import DeepSpeedEngine

    engine_init = inspect.getsource(DeepSpeedEngine.__init__)
    assert "self.module_forward_pre_hook =" in engine_init and "self.module_forward_post_hook =" in engine_init
    assert "self.tb_monitor =" in inspect.getsource(MonitorMaster.__init__)
    assert "self.summary_writer =" in inspect.getsource(TensorBoardMonitor.__init__)


def test_op_builds_are_announced_on_deepspeeds_load_path():
    from deepspeed.ops.op_builder.builder import OpBuilder

    class Unbuildable(OpBuilder):  # not installed, so OpBuilder.load goes to jit_load; incompatible: fails fast
        BUILD_VAR = "DS_BUILD_GAPT_TEST_OP"

        def __init__(self):
            super().__init__(name="gapt_test_op")

        def absolute_name(self):
            return "deepspeed.ops.gapt_test_op"

        def sources(self):
            return []

        def is_compatible(self, verbose=False):
            return False

    said: list[str] = []
    original = OpBuilder.jit_load
    with deepspeed_compat.announce_op_builds(said.append):
        with pytest.raises(RuntimeError, match="gapt_test_op"):
            Unbuildable().load()
    assert said == ["gapt_test_op"]
    assert OpBuilder.jit_load is original


def test_on_cpu_follows_ds_accelerator():
    import os

    assert deepspeed_compat.on_cpu() == (os.environ.get("DS_ACCELERATOR") == "cpu")


def test_cuda_arch_list_defaults_to_the_visible_gpus(monkeypatch):
    import os

    import torch

    assert deepspeed_compat.arch_list([(9, 0), (8, 0), (9, 0)]) == "8.0;9.0"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(9, 0), (8, 0), (9, 0)][i])
    deepspeed_compat.default_cuda_arch_list()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0")  # the user's setting wins
    deepspeed_compat.default_cuda_arch_list()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.0"


def test_to_universal_passes_the_arguments_the_converter_parses(monkeypatch):
    import argparse
    import sys

    from deepspeed.checkpoint import ds_to_universal

    monkeypatch.setattr(sys, "argv", ["ds_to_universal", "--input_folder", "a", "--output_folder", "b"])
    parsed = set(vars(ds_to_universal.parse_arguments()))
    passed: list[argparse.Namespace] = []
    monkeypatch.setattr(ds_to_universal, "main", passed.append)
    deepspeed_compat.to_universal("a", "b")
    assert set(vars(passed[0])) == parsed and passed[0].num_extract_workers == passed[0].num_merge_workers == 1


def zero3_universal_worker(rank: int, ckpt: str) -> dict:
    import gapt_ds
    from gapt_ds.optim import param_groups

    cfg = w.ds_config(stage=3)
    cfg["optimizer"]["params"]["weight_decay"] = 0.1
    engines = []
    for universal in (False, True):
        model = w.tiny_model()
        cfg["checkpoint"] = {"load_universal": universal}
        engine, *_ = gapt_ds.initialize(model=model, model_parameters=param_groups(model), config=dict(cfg))
        engines.append(engine)
    w.train_step(engines[0], 0, rank)
    engines[0].save_checkpoint(ckpt, tag="t")
    deepspeed_compat.to_universal(f"{ckpt}/t", f"{ckpt}/t/universal")
    engine = engines[1]
    engine.load_checkpoint(f"{ckpt}/t", tag="universal")
    optimizer = engine.optimizer.optimizer

    def seen() -> dict:
        steps = [s["step"] for s in optimizer.state.values()]
        return {"decay": [g["weight_decay"] for g in optimizer.param_groups], "shared_step": steps[0] is steps[1]}

    before = seen()
    deepspeed_compat.repair_zero3_universal_load(engine, f"{ckpt}/t/universal")
    return {"before": before, "after": seen(), "files": sorted(p.name for p in Path(ckpt, "t", "universal").iterdir())}


@pytest.mark.distributed
def test_to_universal_and_the_zero3_universal_load_repair(tmp_path):
    (r0,) = run_ranks(zero3_universal_worker, tmp_path / "out", world=1, ckpt=str(tmp_path / "ck"))
    assert "zero" in r0["files"] and "zero_pp_rank_0_mp_rank_00_model_states.pt" in r0["files"]
    # DeepSpeed 0.19.8: every group gets group 0's hyperparameters and one step tensor (when this fails,
    # DeepSpeed fixed it: repair_zero3_universal_load can go)
    assert r0["before"] == {"decay": [0.1, 0.1], "shared_step": True}
    assert r0["after"] == {"decay": [0.1, 0.0], "shared_step": False}
