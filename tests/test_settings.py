"""Settings precedence (flag > env > --config > bundled defaults) and one-line user errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import Field

from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingFile, load_settings, write_resolved


class ToySettings(DataSettings):
    section = "toy"
    count: int = Field(3, ge=0)
    mode: Literal["fast", "exact"] = "fast"
    output: CreatableDir = Path("runs/toy")
    weights: ExistingFile | None = None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("WEALY_SPLIT", "WEALY_COUNT", "WEALY_MODE", "WEALY_DATASET"):
        monkeypatch.delenv(key, raising=False)


def test_bundled_default_is_lowest_layer():
    s = load_settings(ToySettings)
    assert s.split == "test"  # from configs/common.yaml
    assert s.count == 3


def test_precedence_flag_over_env_over_config_over_default(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"split": "val", "count": 7}))
    assert load_settings(ToySettings, cfg).split == "val"          # config > bundled default
    monkeypatch.setenv("WEALY_SPLIT", "train")
    assert load_settings(ToySettings, cfg).split == "train"        # env > config
    assert load_settings(ToySettings, cfg, split="test").split == "test"  # flag > env
    assert load_settings(ToySettings, cfg).count == 7
    assert load_settings(ToySettings, cfg, count=None).count == 7  # None = flag not given


def test_command_section_wins_over_top_level(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"count": 1, "toy": {"count": 9}}))
    assert load_settings(ToySettings, cfg).count == 9


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("split: [unclosed\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("no_such_setting: 1\n", "unknown setting 'no_such_setting'"),
        ("toy: {nope: 1}\n", "section 'toy' has unknown setting 'nope'"),
    ],
)
def test_bad_config_files(tmp_path, text, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(UserError) as err:
        load_settings(ToySettings, cfg)
    assert fragment in str(err.value)
    assert str(cfg) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match=r"--config .*nope.yaml: file not found"):
        load_settings(ToySettings, tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        ({"mode": "slow"}, "for --mode (WEALY_MODE): Input should be 'fast' or 'exact'"),
        ({"count": -1}, "for --count (WEALY_COUNT): Input should be greater than or equal to 0"),
        ({"split": "dev"}, "for --split (WEALY_SPLIT)"),
        ({"weights": Path("/no/such/file.bin")}, "for --weights (WEALY_WEIGHTS): /no/such/file.bin is not an existing file"),
        ({"metadata": Path("/no/such/dir")}, "for --metadata (WEALY_METADATA): /no/such/dir does not exist"),
    ],
)
def test_invalid_values_name_the_option(flags, fragment):
    with pytest.raises(UserError) as err:
        load_settings(ToySettings, **flags)
    assert fragment in str(err.value)


def test_env_value_is_validated_too(monkeypatch):
    monkeypatch.setenv("WEALY_COUNT", "-4")
    with pytest.raises(UserError, match="--count"):
        load_settings(ToySettings)


def test_output_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        load_settings(ToySettings, output=blocker)


def test_resolved_settings_written(tmp_path):
    s = load_settings(ToySettings, count=5)
    path = write_resolved(s, tmp_path / "run")
    data = yaml.safe_load(path.read_text())
    assert data["command"] == "toy" and data["count"] == 5 and data["split"] == "test"
