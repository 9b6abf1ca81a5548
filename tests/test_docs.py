"""Every option is documented once: README's option tables are rendered from the pydantic field
descriptions (the "gapt" block) and the argparse help texts (`gapt-ds train`). On a mismatch the
assertion message is the table to paste into README.md."""

import argparse
import json
from pathlib import Path

from pydantic import BaseModel

from gapt_ds.config import GaptConfig
from gapt_ds.train import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def gapt_block_table(model: type[BaseModel] = GaptConfig, prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += gapt_block_table(field.annotation, prefix=f"{prefix}{name}.")
            continue
        assert field.description, f"{prefix}{name} has no description"
        rows.append(f"| `{prefix}{name}` | `{json.dumps(field.default)}` | {_cell(field.description)} |")
    return rows


def train_options_table() -> list[str]:
    rows = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.option_strings[0]} has no help"
        if action.required:
            default = "required"
        elif isinstance(action, argparse._StoreTrueAction):
            default = "off"
        else:
            default = "none" if action.default is None else f"`{action.default}`"
        rows.append(f"| `{action.option_strings[0]}` | {default} | {_cell(action.help)} |")
    return rows


def check_in_readme(rows: list[str]) -> None:
    readme = ROOT.joinpath("README.md").read_text()
    table = "\n".join(rows)
    assert table in readme, "README.md lacks this table (or it is out of date):\n" + table


def test_every_gapt_key_is_documented_in_readme_as_in_its_field_description():
    rows = gapt_block_table()
    assert len(rows) == len(GaptConfig.model_fields) - 1 + len(GaptConfig.model_fields["gate"].annotation.model_fields)
    check_in_readme(rows)


def test_every_train_option_is_documented_in_readme_as_in_its_help():
    check_in_readme(train_options_table())


def test_every_tensorboard_tag_is_in_readmes_table():
    from gapt_ds import metrics

    readme = ROOT.joinpath("README.md").read_text()
    tags = [v for k, v in vars(metrics).items()
            if k.isupper() and isinstance(v, str) and "/" in v and not k.endswith("PREFIX")]
    assert metrics.CE in tags and metrics.MBE_WEIGHT_LAYER in tags
    missing = [t for t in tags if f"`{t}" not in readme]
    assert not missing, missing


def test_the_method_is_cited_from_the_projects_own_docs():
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.sh"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files
    stale = [f for f in files if "spec §" in (ROOT / f).read_text() and f != "tests/test_docs.py"]
    assert not stale, stale
    algorithm = (ROOT / "docs" / "algorithm.md").read_text()
    sections = re.findall(r"^## (\d)\. ", algorithm, flags=re.M)
    assert sections == [str(i) for i in range(1, 8)], sections
    cited = {m for f in files for m in re.findall(r"docs/algorithm\.md §(\d)", (ROOT / f).read_text())}
    assert cited and cited <= set(sections), cited
