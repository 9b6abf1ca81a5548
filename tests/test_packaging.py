"""The built wheel is complete and the recipes work from it: installed into a temporary directory and
run from another one, with no source checkout on the path."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_resolve_their_configs_from_an_installed_wheel(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    for name in ("gapt_ds", "ds_configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("gapt_ds-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "gapt_ds").rglob("*.py")}
    assert sources <= names, sorted(sources - names)  # pyproject's package list names every subpackage
    shipped = (ROOT / "ds_configs").rglob("*.json")
    configs = {f"gapt_ds/ds_configs/{p.relative_to(ROOT / 'ds_configs')}" for p in shipped}
    assert configs <= names, sorted(configs - names)

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    check = ("import json, gapt_ds; from gapt_ds.recipes.run import RECIPES, shipped_config; "
             "print(json.dumps({'package': gapt_ds.__file__, 'algorithms': {n: shipped_config(r.config)['gapt']"
             ".get('algorithm') for n, r in RECIPES.items() if r.config}}))")
    proc = subprocess.run([sys.executable, "-c", check], cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)
    assert Path(found["package"]).is_relative_to(site)
    assert found["algorithms"] == {"arithmetic": "gapt", "arithmetic-cpu": "gapt", "text-cpu": "gapt",
                                   "fineweb": "gapt", "cycle": "ce"}
    usage = subprocess.run([sys.executable, "-m", "gapt_ds.cli", "recipe", "--help"], cwd=workdir, env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 0 and "arithmetic" in usage.stdout and "forgetting" in usage.stdout, usage.stderr
