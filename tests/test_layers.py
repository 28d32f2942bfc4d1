"""The package's imports only point down its layers and never run in a circle (the contracts in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mwp.paths import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_package_keeps_its_layer_and_cycle_contracts() -> None:
    result = _lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """A copy of the package with one import from a low layer (verify) up to the pipeline fails the check."""
    shutil.copytree(REPO_ROOT / "mwp", tmp_path / "mwp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    numbers = tmp_path / "mwp" / "verify" / "numbers.py"
    numbers.write_text(
        numbers.read_text() + "\n\ndef _late() -> None:\n    from mwp.pipeline import run  # noqa\n"
    )
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "mwp.verify is not allowed to import mwp.pipeline" in result.stdout
    assert "mwp.verify.numbers -> mwp.pipeline" in result.stdout
