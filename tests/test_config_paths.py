"""Relative paths in a config resolve against $HYFUNC_HOME (else the working directory), never
against the installed package: a wheel install must not write its SQLite file into site-packages."""

from __future__ import annotations

from pathlib import Path

import pytest

import hyfunc
from hyfunc.config import default_config_path, load_config
from hyfunc.store.db import normalize_url


def test_relative_paths_resolve_under_hyfunc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYFUNC_HOME", str(tmp_path))
    monkeypatch.delenv("HYFUNC_CONFIG", raising=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("models: {dir: my-models}\nstore: {url: 'sqlite:///state/h.sqlite'}\n")
    config = load_config()
    assert default_config_path() == tmp_path / "configs" / "default.yaml" and config.source == str(default_config_path())
    assert config.models_dir() == tmp_path / "my-models"
    assert normalize_url(config.store.url) == f"sqlite:///{tmp_path / 'state' / 'h.sqlite'}"
    assert (tmp_path / "state").is_dir()  # made for SQLite, under the home


def test_working_directory_without_a_config_uses_the_built_in_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYFUNC_HOME", raising=False)
    monkeypatch.delenv("HYFUNC_CONFIG", raising=False)
    monkeypatch.delenv("HYFUNC_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.models_dir() is None  # nothing found next to the installed package
    url = normalize_url(config.store.url)
    assert url == f"sqlite:///{tmp_path / '.hyfunc' / 'hyfunc.sqlite'}"
    assert not url.startswith(f"sqlite:///{Path(hyfunc.__file__).parent}")
