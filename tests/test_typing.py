"""The type checker is part of the test command (STYLE: every public function is annotated)."""

from __future__ import annotations

from pathlib import Path


def test_mypy_finds_no_errors_in_the_package():
    from mypy import api

    root = Path(__file__).resolve().parents[1]
    out, err, status = api.run(["--config-file", str(root / "pyproject.toml"),
                                str(root / "detops")])
    assert status == 0, out + err
