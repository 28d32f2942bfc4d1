"""The documentation site: it builds with strict warnings, its generated reference follows the schema, and
the shell examples marked runnable run.

A fenced block right after a `<!-- runnable -->` line (`<!-- runnable: exit=2 -->` for an example of an
error) is run by bash, the blocks of one page in order in a fresh folder of their own, with `mwp` under
`debug=default` (a tiny student, a few steps and problems): an example that stops working fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mwp.config.schema import LossTerm, OptimConfig
from mwp.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
MARKER = re.compile(r"^<!--\s*runnable(?::\s*exit=(\d+))?\s*-->\s*$")
FENCE = re.compile(r"^(`{3,})\s*(bash|sh|console)?\s*$")
# Each example should take seconds: the docs tests share CI's budget with the rest of the suite.
EXAMPLE_TIMEOUT_S = 180


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    code: str
    exit_status: int


def runnable_examples(text: str, page: str) -> list[Example]:
    """The blocks of a page marked runnable, in order; a marker not followed by a fenced block is an error."""
    lines = text.splitlines()
    found: list[Example] = []
    index = 0
    while index < len(lines):
        marker = MARKER.match(lines[index].strip())
        index += 1
        if not marker:
            continue
        while index < len(lines) and not lines[index].strip():
            index += 1
        fence = FENCE.match(lines[index].strip()) if index < len(lines) else None
        if fence is None:
            raise ValueError(f"{page}:{index}: a runnable marker must be followed by a bash code block")
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != fence.group(1):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{start}: the runnable block is never closed")
        found.append(Example(page, start, "\n".join(lines[start:end]), int(marker.group(1) or 0)))
        index = end + 1
    return found


def pages_with_examples() -> dict[str, list[Example]]:
    pages = {}
    for path in sorted(DOCS.rglob("*.md")):
        page = path.relative_to(DOCS).as_posix()
        examples = runnable_examples(path.read_text(encoding="utf-8"), page)
        if examples:
            pages[page] = examples
    return pages


def test_runnable_markers_are_parsed() -> None:
    text = "\n".join(
        [
            "intro",
            "<!-- runnable -->",
            "```bash",
            "mwp-config --check",
            "```",
            "```bash",
            "not marked",
            "```",
            "<!-- runnable: exit=2 -->",
            "",
            "```bash",
            "mwp-config --check optim.lr=-1",
            "```",
        ]
    )
    examples = runnable_examples(text, "page.md")
    assert [(e.code, e.exit_status) for e in examples] == [
        ("mwp-config --check", 0),
        ("mwp-config --check optim.lr=-1", 2),
    ]
    with pytest.raises(ValueError, match="must be followed by a bash code block"):
        runnable_examples("<!-- runnable -->\ntext\n", "page.md")


def test_the_docs_have_runnable_examples() -> None:
    pages = pages_with_examples()
    assert pages, "no page marks an example runnable"
    assert "getting-started.md" in pages


def _env(tmp: Path) -> dict[str, str]:
    """`mwp` under debug=default, the checkout's code, outputs and caches inside `tmp`."""
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "mwp"
    real = Path(sys.executable).parent / "mwp"
    wrapper.write_text(f'#!/usr/bin/env bash\nexec "{real}" "$@" debug=default\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MWP_STAGE_CACHE"}
    env.update(
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        MWP_CACHE_DIR=str(tmp / ".mwp-cache"),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(pages_with_examples()))
def test_runnable_examples_run(page: str, tmp_path: Path) -> None:
    env = _env(tmp_path)
    for example in pages_with_examples()[page]:
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", example.code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_S,
        )
        seconds = time.monotonic() - started
        assert done.returncode == example.exit_status, (
            f"docs/{example.page}:{example.line} exited {done.returncode}, expected {example.exit_status} "
            f"after {seconds:.0f} s:\n{example.code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n"
            f"{done.stderr[-3000:]}"
        )


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "NO_MKDOCS_2_WARNING": "1",
        "DISABLE_MKDOCS_2_WARNING": "true",
    }
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert done.returncode == 0 and not warnings, done.stderr[-4000:]
    # the reference is generated from the schema: every help string is on its group's page
    optim = (site / "reference/config/optim/index.html").read_text(encoding="utf-8")
    for info in OptimConfig.model_fields.values():
        assert info.description and info.description in optim
    loss = (site / "reference/config/loss/index.html").read_text(encoding="utf-8")
    assert "loss.terms[i].scale_by_temperature_squared" in loss
    assert LossTerm.__dataclass_fields__["weight"].metadata["help"].replace(">", "&gt;") in loss
    # and every command's --help
    judge = (site / "reference/cli/mwp-judge/index.html").read_text(encoding="utf-8")
    assert "--answer-type" in judge
