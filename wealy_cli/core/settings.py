"""Every setting written once, validated once, with one precedence rule for every command.

A workflow's options are one pydantic model in the library (``Options``): each field has its
type, default, bounds and a one-line description, and the library function takes that model as
is. A command's settings (``CommandSettings``) combine those models with data locations; the
command-line flags, their help and defaults are generated from the fields
(``wealy_cli/commands/params.py``), so nothing is typed twice. Values come from, first wins::

    command-line flag  >  environment variable WEALY_<FIELD>  >  --config FILE.yaml  >  field default

A config file may set a field at its top level (for every command that has it) or inside a
section named after a command (``train:``, ``extract_whisper:`` ...; the fixed list
``SECTIONS``), which applies to that command only and wins over the top level.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from wealy_cli.core.errors import UserError
from wealy_cli.core.files import write_atomically

ENV_PREFIX = "WEALY_"
# Config-file sections: one per command, fixed (not "whatever settings classes were imported").
SECTIONS = ("extract_whisper", "extract_sbert", "extract_clews", "train", "evaluate", "distances",
            "baselines", "fuse", "demo", "models_list", "models_download", "models_import", "models_upload",
            "store", "store_show",
            "index_build", "index_add", "index_info", "search")
_FILE_LAYER: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("wealy_file_layer", default=None)
_REGISTRY: dict[str, type[CommandSettings]] = {}


# ---------------------------------------------------------------- declaring a setting


def option(default: Any = ..., help: str = "", *, flag: str | None = None, short: str | None = None,
           negative: str | None = None, shown_default: str | None = None, **constraints: Any) -> Any:
    """A setting: its default, a one-line description and its bounds (``ge``, ``gt``, ``le``, ``lt``).

    ``flag`` overrides the generated ``--field-name``; ``short`` adds e.g. ``-o``; ``negative``
    names the off switch of a boolean (default ``--no-<flag>``); ``shown_default`` is what help
    prints when the default is computed at run time (e.g. "runs/train/NAME")."""
    extra = {k: v for k, v in (("flag", flag), ("short", short), ("negative", negative),
                                ("shown_default", shown_default)) if v is not None}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


def argument(default: Any = ..., help: str = "", **constraints: Any) -> Any:
    """A setting given as a positional command-line argument instead of a ``--flag``."""
    return Field(default, description=help, json_schema_extra={"argument": True}, **constraints)


def field_extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def flag_name(name: str, field: FieldInfo) -> str:
    """How the user names a field on the command line: ``--flag`` or ``argument NAME``."""
    extra = field_extra(field)
    if extra.get("argument"):
        return f"argument {name.upper()}"
    return extra.get("flag") or "--" + name.replace("_", "-")


# ---------------------------------------------------------------- value types


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


def _comma_list(value: Any) -> Any:
    """"a,b" on the command line or in the environment, a YAML list in a config file."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


ExistingPath = Annotated[Path, AfterValidator(_must_exist)]
ExistingFile = Annotated[Path, AfterValidator(_must_be_file)]
ExistingDir = Annotated[Path, AfterValidator(_must_be_dir)]
CreatableDir = Annotated[Path, AfterValidator(_creatable)]
CommaList = Annotated[list[str], BeforeValidator(_comma_list)]


# ---------------------------------------------------------------- options and settings


class Options(BaseModel):
    """Base of a workflow's options: the values the library function reads, validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


DatasetName = Literal["shs", "lyric-covers", "discogs-vi", "csv"]
SplitName = Literal["train", "val", "test"]


class DataSettings(Options):
    """Where a dataset's split files and audio are (every command that reads a split has these)."""

    dataset: DatasetName = option("shs", "shs, lyric-covers, discogs-vi or csv (your own CSV: --metadata).")
    split: SplitName = option("test", "The split: train, val or test.")
    metadata: ExistingPath | None = option(
        None, "Split files (folder) or the collection CSV for --dataset csv.",
        shown_default="bundled split files for shs and lyric-covers")
    audio_dir: ExistingDir | None = option(None, "Folder with the audio files (relative CSV paths: the CSV's folder).")


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class CommandSettings(BaseSettings):
    """A command's settings: its workflow's options plus data locations. Subclasses set
    ``section`` (one of ``SECTIONS``: the config-file section and the name in settings.yaml)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)
    section: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        section = cls.__dict__.get("section")
        if section:
            if section not in SECTIONS:
                raise ValueError(f"settings section {section!r} is not in SECTIONS")
            _REGISTRY[section] = cls

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _DictSource(settings_cls, _FILE_LAYER.get() or {}))

    def resolved(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of the final values."""
        return self.model_dump(mode="json")

    def options(self, kind: type[M]) -> M:
        """The ``kind`` part of these settings, as that model (for code that wants exactly it)."""
        return kind.model_validate(self.model_dump(include=set(kind.model_fields)))


M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound=CommandSettings)


def ordered_fields(cls: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """Fields in reading order: the class's own first, then each base's, as declared."""
    seen: dict[str, FieldInfo] = {}
    for klass in cls.__mro__:
        for name in getattr(klass, "__annotations__", {}):
            if name in cls.model_fields and name not in seen:
                seen[name] = cls.model_fields[name]
    return list(seen.items())


# ---------------------------------------------------------------- loading


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


def known_fields() -> set[str]:
    """Every field of every command (the registry is complete once the CLI is imported)."""
    return set().union(*(set(c.model_fields) for c in _REGISTRY.values()))


def config_layer(data: dict[str, Any], cls: type[CommandSettings], origin: str) -> dict[str, Any]:
    """Top-level fields of ``cls`` overlaid with the command's own section."""
    fields = set(cls.model_fields)
    anywhere = known_fields() | fields
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"{origin}: section '{key}' must be a mapping")
        elif key not in anywhere:
            raise UserError(f"{origin}: unknown setting '{key}'")
    layer = {k: v for k, v in data.items() if k in fields}
    own = data.get(cls.section) or {}
    for key in own:
        if key not in fields:
            raise UserError(f"{origin}: section '{cls.section}' has unknown setting '{key}'")
    layer.update(own)
    return layer


def load_settings(cls: type[S], config: Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from flags (``None`` = not given), environment and config file."""
    layer = config_layer(read_yaml(Path(config)), cls, str(config)) if config else {}
    token = _FILE_LAYER.set(layer)
    try:
        return cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        raise UserError(describe_validation_error(err, cls)) from err
    finally:
        _FILE_LAYER.reset(token)


def describe_validation_error(err: ValidationError, cls: type[BaseModel]) -> str:
    """One line naming every option that is wrong (flag and environment variable) and why."""
    return "; ".join(_describe(problem, cls) for problem in err.errors())


def _describe(problem: Any, cls: type[BaseModel]) -> str:
    loc = [str(p) for p in problem.get("loc", ())]
    msg = problem.get("msg", "invalid value").removeprefix("Value error, ")
    if not loc:  # a rule between settings (a model validator): its message names them
        return msg
    name = loc[0]
    field = cls.model_fields.get(name)
    if problem.get("type") == "extra_forbidden" or field is None:
        return f"unknown setting '{name}'"
    flag = flag_name(name, field)
    if problem.get("type") == "missing":
        what = f": {field.description.rstrip('.')}" if field.description else ""
        return f"{flag} is required{what}"
    value = problem.get("input")
    shown = f" {str(value) if isinstance(value, Path) else value!r}" if not isinstance(value, dict) else ""
    env = "" if flag.startswith("argument") else f" ({ENV_PREFIX}{name.upper()})"
    return f"invalid value{shown} for {flag}{env}: {msg}"


def write_resolved(settings: CommandSettings, directory: Path, name: str = "settings.yaml") -> Path:
    """Record the resolved settings of a run next to its outputs."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"command": settings.section, **settings.resolved()}
    return write_atomically(directory / name, yaml.safe_dump(payload, sort_keys=False))

