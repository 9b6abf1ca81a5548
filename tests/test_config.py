"""The "gapt" block schema: defaults, valid values, every kind of invalid value, all errors at once."""

import json

import pytest

from gapt_ds.config import GaptConfig, GateConfig


def test_defaults_when_block_absent(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2}))
    cfg = GaptConfig.from_ds_config(path)
    assert cfg == GaptConfig()
    assert (cfg.algorithm, cfg.mbe_weight, cfg.patch_size, cfg.layers, cfg.mbe_mode, cfg.phase) == (
        "gapt", 1.0, 8, "inner", "patch", "adaptive")
    assert cfg.gate == GateConfig(patience_memorize=125, patience_compress=75, ce_delta=0.01,
                                  mbe_delta=0.002, spike_tolerance=0.1, improvement="absolute")
    assert GaptConfig.from_ds_config(None) == GaptConfig()


def test_valid_block_round_trips():
    block = {"algorithm": "mbe", "mbe_weight": 5, "patch_size": 16, "layers": [1, -2], "mbe_mode": "global",
             "phase": "compress", "gate": {"patience_memorize": 10, "improvement": "relative"},
             "alignment_every": 50}
    cfg = GaptConfig.from_ds_config({"gapt": block, "zero_optimization": {"stage": 2}})
    assert cfg.layers == [1, -2] and cfg.gate.patience_memorize == 10 and cfg.gate.patience_compress == 75
    assert GaptConfig(**cfg.to_ds_block()) == cfg


@pytest.mark.parametrize("block, path, fragment", [
    ({"patch_szie": 8}, "gapt.patch_szie", "did you mean 'patch_size'"),
    ({"gate": {"patience_compres": 3}}, "gapt.gate.patience_compres", "did you mean 'patience_compress'"),
    ({"mbe_weight": -1}, "gapt.mbe_weight", "greater than or equal to 0"),
    ({"mbe_weight": float("nan")}, "gapt.mbe_weight", "finite"),
    ({"patch_size": 1}, "gapt.patch_size", "greater than or equal to 2"),
    ({"patch_size": "8x"}, "gapt.patch_size", "valid integer"),
    ({"layers": "inners"}, "gapt.layers", "'inner', 'all' or a list"),
    ({"layers": []}, "gapt.layers", "empty"),
    ({"layers": [1, 1]}, "gapt.layers", "duplicates"),
    ({"layers": [1, "x"]}, "gapt.layers", "integers"),
    ({"mbe_mode": "full"}, "gapt.mbe_mode", "'patch' or 'global'"),
    ({"phase": "compression"}, "gapt.phase", "'adaptive', 'memorize' or 'compress'"),
    ({"gate": {"improvement": "percent"}}, "gapt.gate.improvement", "'absolute' or 'relative'"),
    ({"gate": {"patience_memorize": 0}}, "gapt.gate.patience_memorize", "greater than or equal to 1"),
    ({"alignment_every": -5}, "gapt.alignment_every", "greater than or equal to 0"),
])
def test_each_invalid_value_names_its_key(block, path, fragment):
    with pytest.raises(ValueError) as err:
        GaptConfig.from_ds_config({"gapt": block})
    line = next(x for x in str(err.value).splitlines() if x.strip().startswith(path + ":"))
    assert fragment in line, str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"gapt": {"patch_szie": 8, "mbe_weight": -2, "gate": {"ce_delta": "big"}}}))
    with pytest.raises(ValueError) as err:
        GaptConfig.from_ds_config(path)
    msg = str(err.value)
    assert str(path) in msg and "3 problems" in msg
    for key in ("gapt.patch_szie", "gapt.mbe_weight", "gapt.gate.ce_delta"):
        assert key in msg


def test_bad_files_and_shapes(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        GaptConfig.from_ds_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"gapt": {"patch_size": 8,}}')
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        GaptConfig.from_ds_config(broken)
    with pytest.raises(ValueError, match='"gapt" must be a JSON object'):
        GaptConfig.from_ds_config({"gapt": [1, 2]})
