from __future__ import annotations

import json
import subprocess
import sys


def test_help_starts_without_heavy_imports():
    code = (
        "import sys, runpy; sys.argv=['detops','--help']\n"
        "try:\n runpy.run_module('detops', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy=[m for m in ('torch','onnxruntime','matplotlib','sqlalchemy','scipy')\n"
        "       if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    assert "quickstart" in out.stdout and "data" in out.stdout


def test_init_creates_workspace_and_commands_find_it_from_below(detops, tmp_path):
    detops("init", str(tmp_path / "ws"))
    assert (tmp_path / "ws" / "detops.yaml").is_file()
    assert (tmp_path / "ws" / ".detops" / "detops.db").is_file()
    sub = tmp_path / "ws" / "a" / "b"
    sub.mkdir(parents=True)
    out = json.loads(detops("config", "show", "--json", cwd=sub).stdout)
    assert out["workspace"] == str(tmp_path / "ws")


def test_init_keeps_an_edited_config(detops, tmp_path):
    detops("init", str(tmp_path))
    (tmp_path / "detops.yaml").write_text("data:\n  workers: 1\n")
    detops("init", str(tmp_path))
    assert (tmp_path / "detops.yaml").read_text() == "data:\n  workers: 1\n"


def test_no_workspace_is_said_clearly(detops, tmp_path):
    proc = detops("data", "list", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "no detops workspace in" in proc.stderr and "detops init" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_show_prints_each_source(detops, tmp_path):
    detops("init", str(tmp_path))
    (tmp_path / "detops.yaml").write_text("data:\n  workers: 2\n  split: {train: 0.5, val: 0.5}\n")
    out = json.loads(
        detops(
            "config",
            "show",
            "--json",
            "--workspace",
            str(tmp_path),
            env={"DETOPS_DATA_VOC_ONE_BASED": "false"},
        ).stdout
    )
    s = out["settings"]
    assert s["data.workers"] == {"value": 2, "source": "detops.yaml"}
    assert s["data.voc_one_based"] == {"value": False, "source": "env DETOPS_DATA_VOC_ONE_BASED"}
    assert s["data.split.test"] == {"value": 0.0, "source": "default"}
    text = detops("config", "show", cwd=tmp_path).stdout
    assert "data.workers" in text and "(detops.yaml)" in text


def test_detops_home_selects_the_workspace(detops, tmp_path):
    detops("init", str(tmp_path / "ws"))
    out = json.loads(
        detops(
            "config", "show", "--json", cwd=tmp_path, env={"DETOPS_HOME": str(tmp_path / "ws")}
        ).stdout
    )
    assert out["workspace"] == str(tmp_path / "ws")


def test_bad_config_is_a_clear_error(detops, tmp_path):
    detops("init", str(tmp_path))
    (tmp_path / "detops.yaml").write_text("data:\n  wrkers: 2\n")
    proc = detops("config", "show", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "unknown setting 'data.wrkers'" in proc.stderr
