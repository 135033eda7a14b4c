from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_detops(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess (what a user types)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DETOPS_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "detops", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"detops {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture()
def detops():
    return run_detops
