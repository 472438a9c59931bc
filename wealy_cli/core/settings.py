"""Validated settings with one precedence rule for every command.

    command-line flag  >  environment variable WEALY_<FIELD>  >  --config FILE.yaml  >  configs/ defaults

A config file (user's or bundled) may set a field at its top level, which applies to every
command that has that field, or inside a section named after a command (``train:``,
``extract_whisper:`` ...), which applies to that command only and wins over the top level.
Bundled defaults live in ``wealy_cli/configs/<section>.yaml`` (``configs/`` in the repository)
plus ``common.yaml``.
"""

from __future__ import annotations

import contextvars
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import AfterValidator, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from wealy_cli.core.errors import UserError
from wealy_cli.core.files import write_atomically

ENV_PREFIX = "WEALY_"
_FILE_LAYERS: contextvars.ContextVar[tuple[dict[str, Any], dict[str, Any]]] = contextvars.ContextVar(
    "wealy_file_layers", default=({}, {})
)
_REGISTRY: dict[str, type[WealySettings]] = {}


# ---------------------------------------------------------------- path validators


def _must_exist(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return path


def _must_be_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path} is not an existing file")
    return path


def _must_be_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path} is not an existing directory")
    return path


def _creatable(path: Path) -> Path:
    """The path exists as a directory, or can be created: its nearest existing parent is a
    writable directory."""
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"{path} cannot be created ({parent} is not a writable directory)")
    return path


ExistingPath = Annotated[Path, AfterValidator(_must_exist)]
ExistingFile = Annotated[Path, AfterValidator(_must_be_file)]
ExistingDir = Annotated[Path, AfterValidator(_must_be_dir)]
CreatableDir = Annotated[Path, AfterValidator(_creatable)]


# ---------------------------------------------------------------- sources


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class WealySettings(BaseSettings):
    """Base of every command's settings. Subclasses set ``section`` (their YAML section)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)
    section: ClassVar[str] = ""
    arguments: ClassVar[tuple[str, ...]] = ()  # fields given as positional arguments, not --flags

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("section"):
            _REGISTRY[cls.section] = cls

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        user, defaults = _FILE_LAYERS.get()
        return (init_settings, env_settings, _DictSource(settings_cls, user), _DictSource(settings_cls, defaults))

    def resolved(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of the final values."""
        return self.model_dump(mode="json")


S = TypeVar("S", bound=WealySettings)


# ---------------------------------------------------------------- loading


def configs_dir() -> Path:
    return Path(str(resources.files("wealy_cli") / "configs"))


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _layer(data: dict[str, Any], cls: type[WealySettings], origin: str) -> dict[str, Any]:
    """Top-level fields of ``cls`` overlaid with the command's own section."""
    fields = set(cls.model_fields)
    known_sections = set(_REGISTRY)
    known_fields = set().union(*(set(c.model_fields) for c in _REGISTRY.values())) if _REGISTRY else fields
    for key, value in data.items():
        if key in known_sections:
            if not isinstance(value, dict):
                raise UserError(f"{origin}: section '{key}' must be a mapping")
        elif key not in known_fields:
            raise UserError(f"{origin}: unknown setting '{key}'")
    layer = {k: v for k, v in data.items() if k in fields and k not in known_sections}
    own = data.get(cls.section) or {}
    for key in own:
        if key not in fields:
            raise UserError(f"{origin}: section '{cls.section}' has unknown setting '{key}'")
    layer.update(own)
    return layer


def bundled_defaults(cls: type[WealySettings]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name in ("common.yaml", f"{cls.section}.yaml"):
        path = configs_dir() / name
        if path.is_file():
            data = read_yaml(path)
            layer.update({k: v for k, v in data.items() if k in cls.model_fields})
    return layer


def load_settings(cls: type[S], config: Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from flags (``None`` = not given), environment, config file and defaults."""
    user = _layer(read_yaml(config), cls, str(config)) if config else {}
    token = _FILE_LAYERS.set((user, bundled_defaults(cls)))
    try:
        return cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        raise UserError(describe_validation_error(err, cls)) from err
    finally:
        _FILE_LAYERS.reset(token)


def describe_validation_error(err: ValidationError, cls: type[WealySettings]) -> str:
    """One line naming the option (flag and environment variable) and what is wrong."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    name = loc[0] if loc else "?"
    flag = f"argument {name.upper()}" if name in cls.arguments else "--" + name.replace("_", "-")
    env = ENV_PREFIX + name.upper()
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        return f"unknown setting '{name}'"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    value = first.get("input")
    if isinstance(value, Path):
        value = str(value)
    shown = f" {value!r}" if value is not None and not isinstance(value, dict) else ""
    return f"invalid value{shown} for {flag} ({env}): {msg}{more}"


def write_resolved(settings: WealySettings, directory: Path, name: str = "settings.yaml") -> Path:
    """Record the resolved settings of a run next to its outputs."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    payload = {"command": settings.section, **settings.resolved()}
    return write_atomically(path, yaml.safe_dump(payload, sort_keys=False))


# ---------------------------------------------------------------- shared parts

from typing import Literal  # noqa: E402

DatasetName = Literal["shs", "lyric-covers", "discogs-vi", "csv"]
SplitName = Literal["train", "val", "test"]


class DataSettings(WealySettings):
    """Where a dataset's split files and audio are (shared by every command that reads one)."""

    dataset: DatasetName = "shs"
    split: SplitName = "test"
    metadata: ExistingPath | None = None
    audio_dir: ExistingDir | None = None
