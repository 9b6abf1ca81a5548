"""Install a throw-away plugin package (entry points) into the running interpreter's environment."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def installed_plugin(tmp_path: Path, dist_name: str, module: str, entry_points: dict[str, dict[str, str]],
                     source: str) -> Iterator[None]:
    """pip-install a one-module package declaring ``entry_points`` ({group: {name: "module:attr"}});
    spawned ranks see it too. Uninstalled on exit."""
    root = tmp_path / dist_name
    root.mkdir()
    groups = "".join(f'[project.entry-points."{group}"]\n' + "".join(f'{k} = "{v}"\n' for k, v in eps.items())
                     for group, eps in entry_points.items())
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{dist_name}"\nversion = "0.0.1"\n{groups}'
        f'[tool.setuptools]\npy-modules = ["{module}"]\n')
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-q", str(root)], check=True,
                   capture_output=True, cwd=tmp_path)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", dist_name], check=True, capture_output=True)
