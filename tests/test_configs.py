"""Every shipped DeepSpeed config is valid for DeepSpeed and for gapt-ds, and documented."""

import json
from pathlib import Path

import pytest

from gapt_ds.config import GaptConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "ds_configs").rglob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid_and_documented(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads(path.read_text())
    assert "gapt" in raw
    GaptConfig.from_ds_config(path)
    DeepSpeedConfig(raw)  # DeepSpeed's own pydantic validation (it keeps the "gapt" key)
    assert f"`{path.relative_to(ROOT / 'ds_configs')}`" in (ROOT / "docs" / "configs.md").read_text()


def test_deepspeed_rejects_typos_in_its_own_sections():
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads(CONFIGS[0].read_text())
    raw["zero_optimization"]["stagee"] = 2
    with pytest.raises(Exception, match="stagee"):
        DeepSpeedConfig(raw)
