from __future__ import annotations

import pytest

from detops.config import DEFAULT_YAML, env_name, resolve
from detops.errors import ConfigError


def test_defaults_come_from_the_schema(tmp_path):
    cfg = resolve(None, env={})
    assert cfg.settings.data.split.train == 0.8
    assert set(cfg.sources.values()) == {"default"}


def test_default_yaml_resolves_to_the_defaults(tmp_path):
    f = tmp_path / "detops.yaml"
    f.write_text(DEFAULT_YAML)
    assert resolve(f, env={}).settings == resolve(None, env={}).settings


@pytest.mark.parametrize(
    ("yaml_val", "env_val", "flag_val", "expected", "source"),
    [
        (None, None, None, 0, "default"),
        (2, None, None, 2, "detops.yaml"),
        (2, "3", None, 3, "env DETOPS_DATA_WORKERS"),
        (2, "3", 4, 4, "flag"),  # flag beats env beats file
        (None, None, 5, 5, "flag"),
    ],
)
def test_precedence(tmp_path, yaml_val, env_val, flag_val, expected, source):
    f = tmp_path / "detops.yaml"
    f.write_text("" if yaml_val is None else f"data:\n  workers: {yaml_val}\n")
    env = {} if env_val is None else {"DETOPS_DATA_WORKERS": env_val}
    flags = {} if flag_val is None else {"data.workers": flag_val}
    cfg = resolve(f, env=env, flags=flags)
    assert cfg.settings.data.workers == expected
    assert cfg.sources["data.workers"] == source


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("data: [1, 2", "not valid YAML"),  # broken YAML
        ("- a\n- b\n", "expected a mapping"),  # a list at the top
        ("dta:\n  workers: 1\n", "unknown section 'dta'"),  # typo in a section
        ("data:\n  wrkers: 1\n", "unknown setting 'data.wrkers'"),  # typo in a key
        ("data:\n  workers: -1\n", "data.workers"),  # out of range
        ("data:\n  split: {train: 0.5, val: 0.2, test: 0.0}\n", "add up to 1"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, content, message):
    f = tmp_path / "detops.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        resolve(f, env={})


def test_bad_env_value_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="data.workers"):
        resolve(None, env={"DETOPS_DATA_WORKERS": "many"})


def test_env_names():
    assert env_name("store.url") == "DETOPS_STORE_URL"
    assert env_name("data.split.val") == "DETOPS_DATA_SPLIT_VAL"


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("true", True), ("alone", "alone")])
def test_allow_spinning_takes_a_bool_or_alone(raw, value):
    cfg = resolve(None, env={"DETOPS_SERVE_ALLOW_SPINNING": raw})
    assert cfg.settings.serve.allow_spinning == value


def test_allow_spinning_refuses_other_words(tmp_path):
    f = tmp_path / "detops.yaml"
    f.write_text("serve:\n  allow_spinning: sometimes\n")
    with pytest.raises(ConfigError, match="serve.allow_spinning"):
        resolve(f, env={})
