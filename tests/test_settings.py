"""Settings: precedence (flag > env > --config > field default), one-line errors, every setting
written once (flags, help and config files derive from the models), the bundled configs."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Literal

import pytest
import typer.main
import yaml
from helpers.cli import REPO, assert_user_error, run_wealy

from wealy_cli.cli import app
from wealy_cli.commands.params import leaf_commands, settings_of
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import (
    _REGISTRY,
    SECTIONS,
    CommandSettings,
    CreatableDir,
    DataSettings,
    ExistingFile,
    load_settings,
    option,
    write_resolved,
)


class ToySettings(CommandSettings, DataSettings):
    section = "store_show"  # any known section: the toy stands in for a command
    count: int = option(3, "How many.", ge=0)
    mode: Literal["fast", "exact"] = option("fast", "How.")
    output: CreatableDir = option(Path("runs/toy"), "Where.")
    weights: ExistingFile | None = option(None, "A file.")
    store: Path = option(help="The feature store made by wealy extract.")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("WEALY_SPLIT", "WEALY_COUNT", "WEALY_MODE", "WEALY_DATASET"):
        monkeypatch.delenv(key, raising=False)


def toy(config: Path | None = None, **flags) -> ToySettings:
    return load_settings(ToySettings, config, **{"store": Path("s"), **flags})


def test_field_default_is_the_lowest_layer():
    s = toy()
    assert s.split == "test" and s.count == 3


def test_precedence_flag_over_env_over_config_over_default(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"split": "val", "count": 7}))
    assert toy(cfg).split == "val"                     # config > default
    monkeypatch.setenv("WEALY_SPLIT", "train")
    assert toy(cfg).split == "train"                   # env > config
    assert toy(cfg, split="test").split == "test"      # flag > env
    assert toy(cfg, count=None).count == 7             # None = flag not given


def test_command_section_wins_over_top_level(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"count": 1, "store_show": {"count": 9}}))
    assert toy(cfg).count == 9


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("split: [unclosed\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("no_such_setting: 1\n", "unknown setting 'no_such_setting'"),
        ("store_show: {nope: 1}\n", "section 'store_show' has unknown setting 'nope'"),
        ("train: 3\n", "section 'train' must be a mapping"),
    ],
)
def test_bad_config_files(tmp_path, text, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(UserError) as err:
        toy(cfg)
    assert fragment in str(err.value) and str(cfg) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match=r"--config .*nope.yaml: file not found"):
        toy(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        ({"mode": "slow"}, "for --mode (WEALY_MODE): Input should be 'fast' or 'exact'"),
        ({"count": -1}, "for --count (WEALY_COUNT): Input should be greater than or equal to 0"),
        ({"split": "dev"}, "for --split (WEALY_SPLIT)"),
        ({"weights": Path("/no/such/file.bin")}, "for --weights (WEALY_WEIGHTS): /no/such/file.bin is not an existing"),
        ({"metadata": Path("/no/such/dir")}, "for --metadata (WEALY_METADATA): /no/such/dir does not exist"),
    ],
)
def test_invalid_values_name_the_option(flags, fragment):
    with pytest.raises(UserError) as err:
        toy(**flags)
    assert fragment in str(err.value)


def test_every_problem_is_reported_and_required_says_what_it_is():
    with pytest.raises(UserError) as err:
        load_settings(ToySettings, count=-1, mode="slow")
    message = str(err.value)
    assert "--store is required: The feature store made by wealy extract" in message
    assert "--count" in message and "--mode" in message and "more problem" not in message


def test_env_value_is_validated_too(monkeypatch):
    monkeypatch.setenv("WEALY_COUNT", "-4")
    with pytest.raises(UserError, match="--count"):
        toy()


def test_output_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        toy(output=blocker)


def test_resolved_settings_written(tmp_path):
    path = write_resolved(toy(count=5), tmp_path / "run")
    data = yaml.safe_load(path.read_text())
    assert data["command"] == "store_show" and data["count"] == 5 and data["split"] == "test"


# ---------------------------------------------------------------- derived from the models


def _commands() -> dict:
    """Every leaf command of the real CLI, by its path ("extract whisper")."""
    return dict(leaf_commands(typer.main.get_command(app)))


def test_sections_are_a_fixed_list_and_every_command_has_one():
    from wealy_cli import cli  # noqa: F401 (imports every command)

    assert set(_REGISTRY) <= set(SECTIONS)
    assert {"extract_whisper", "extract_sbert", "extract_clews", "train", "evaluate", "distances",
            "baselines", "fuse", "demo"} <= set(_REGISTRY)


def test_help_shows_each_fields_description_bounds_and_default():
    from wealy_cli.commands.train import TrainSettings

    train = {p.name: p for p in _commands()["train"].params}
    lr = TrainSettings.model_fields["lr"]
    assert train["lr"].help.startswith(lr.description.rstrip("."))
    assert "> 0" in train["lr"].help and "[default: 0.0001]" in train["lr"].help
    assert "--layers" in train["num_transformer_blocks"].opts      # the field's own flag name
    assert train["store"].help.endswith("[required]")
    proc = run_wealy("train", "--arch", "cnn")  # Literal → choices checked by the parser
    assert_user_error(proc, "--arch", "transformer", "avgmlp")


def _out_of_range(field) -> object | None:
    """A value just outside the field's bounds (None when it has none)."""
    for meta in field.metadata:
        for key, delta in (("ge", -1), ("gt", -1), ("le", 1), ("lt", 1)):
            bound = getattr(meta, key, None)
            if bound is not None:
                value = bound + delta if key in ("ge", "le") else bound + (delta if key == "gt" else 0)
                return int(value) if isinstance(bound, int) and not isinstance(bound, bool) else float(value)
    return None


def _numeric_cases():
    cases = []
    for path, cmd in _commands().items():
        settings = settings_of(cmd)
        if settings is None:
            continue
        for name, field in settings.model_fields.items():
            value = _out_of_range(field)
            if value is not None:
                flag = next(p for p in cmd.params if p.name == name).opts[0]
                cases.append(pytest.param(path, flag, value, id=f"{path}:{flag}"))
    return cases


@pytest.mark.parametrize("path, flag, value", _numeric_cases())
def test_every_numeric_option_out_of_range_is_one_line_exit_2(path, flag, value, tmp_path):
    proc = run_wealy(*path.split(), flag, value, cwd=tmp_path)
    assert_user_error(proc, flag)


def test_the_walk_covers_every_command_with_numbers():
    covered = {p.values[0] for p in _numeric_cases()}
    assert {"extract whisper", "extract sbert", "extract clews", "train", "evaluate", "distances", "baselines",
            "demo"} <= covered


def test_alphas_and_compute_accept_a_yaml_list(tmp_path):
    from wealy_cli.commands.baselines import BaselinesSettings
    from wealy_cli.commands.fuse import FuseSettings

    cfg = tmp_path / "c.yaml"
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    cfg.write_text(yaml.safe_dump({"alphas": [0, 1.5], "compute": ["bm25", "tfidf_cosine"]}))
    assert load_settings(FuseSettings, cfg, inputs=[a, b]).alphas == [0.0, 1.5]
    assert load_settings(FuseSettings, None, inputs=[a, b], alphas="0:1:0.5").alphas == [0.0, 0.5, 1.0]
    baselines = load_settings(BaselinesSettings, cfg, store=tmp_path, output=tmp_path / "o")
    assert baselines.compute == ["bm25", "tfidf-cosine"]


# ---------------------------------------------------------------- config files


def _readme_config() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks, "the README shows an example config"
    return yaml.safe_load(blocks[0])


def _settings_classes() -> list[type[CommandSettings]]:
    from wealy_cli import cli  # noqa: F401 (registers every command's settings)

    return list(_REGISTRY.values())


@pytest.mark.parametrize("name", ["paper.yaml", "cpu-small.yaml", "late.yaml", "README"])
def test_bundled_and_readme_configs_load_under_every_command(name, tmp_path):
    cfg = tmp_path / "c.yaml"
    data = _readme_config() if name == "README" else yaml.safe_load((REPO / "configs" / name).read_text())
    cfg.write_text(yaml.safe_dump(data))
    for cls in _settings_classes():
        try:
            load_settings(cls, cfg)
        except UserError as err:  # missing or absent locations are fine; the file itself must be accepted
            assert "unknown setting" not in str(err) and "section" not in str(err), (cls.section, str(err))
            assert "is required" in str(err) or "not an existing" in str(err), (cls.section, str(err))


def test_paper_config_agrees_with_the_code_defaults():
    from wealy_cli.model.options import TrainRun
    from wealy_cli.retrieval.options import EvaluateRun

    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    for section, model in (("train", TrainRun), ("evaluate", EvaluateRun)):
        for key, value in paper[section].items():
            assert model.model_fields[key].default == value, (section, key)
    assert paper["extract_whisper"]["model"] == "openai/whisper-large-v3-turbo"


def test_every_setting_is_typed_described_and_annotated():
    for cls in _settings_classes():
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
            assert typing.get_type_hints(cls)[name] is not None


def test_options_reference_is_generated_and_current():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "options_doc.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
