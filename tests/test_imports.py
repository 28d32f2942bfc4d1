"""Importing the config and data layers is cheap and changes nothing: no torch, no resolvers, no env."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mwp.paths import REPO_ROOT

HEAVY = ("torch", "lightning", "transformers")


def _probe(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_config_and_data_pulls_in_no_heavy_framework() -> None:
    found = _probe(
        "import json, sys\n"
        "import mwp.config, mwp.data, mwp.data.artifact, mwp.data.formats, mwp.data.io\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert found == []


def test_importing_the_cli_has_no_side_effects() -> None:
    state = _probe(
        "import json, os\n"
        "from omegaconf import OmegaConf\n"
        "import mwp.cli.run, mwp.config\n"
        "print(json.dumps({'resolver': OmegaConf.has_resolver('mwp.data_dir'),"
        " 'env': os.environ.get('TOKENIZERS_PARALLELISM')}))"
    )
    assert state == {"resolver": False, "env": None}
