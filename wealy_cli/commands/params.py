"""Typer commands generated from settings models: one field → one flag (or argument), its help,
default and bounds taken from the field, so no command types an option twice.

    @command(TrainSettings)
    def train(settings: TrainSettings) -> None:
        "Train a WEALY model ..."

gives ``wealy train`` every field of ``TrainSettings`` as ``--field-name`` (or the field's own
``flag``), plus ``--config FILE.yaml``. Every flag defaults to "not given" (None) so that the
environment, the config file and the field default apply in that order (``load_settings``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from wealy_cli.core.settings import CommandSettings, field_extra, flag_name, load_settings, ordered_fields

S = TypeVar("S", bound=CommandSettings)
Prepare = Callable[[dict[str, Any]], dict[str, Any]]

CONFIG_HELP = "YAML settings file: settings at the top level or in a section named after the command."
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def command(settings_cls: type[S], prepare: Prepare | None = None,
            config: bool = True) -> Callable[[Callable[[S], Any]], Callable[..., Any]]:
    """Decorator: ``run(settings)`` → a Typer command taking ``settings_cls``'s fields as flags.
    ``prepare`` may rewrite the given flags before validation (e.g. what ``--model`` implies)."""

    def wrap(run: Callable[[S], Any]) -> Callable[..., Any]:
        params = [_parameter(name, field) for name, field in ordered_fields(settings_cls)]
        params.sort(key=lambda p: not _is_argument(p))  # positional arguments first
        if config:
            params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                            default=typer.Option(None, "--config", help=CONFIG_HELP)))

        @functools.wraps(run)
        def cli_command(**values: Any) -> Any:
            config_file = values.pop("config", None)
            values = {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}
            if prepare is not None:
                values = prepare(values)
            return run(load_settings(settings_cls, config_file, **values))

        cli_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        cli_command.__wrapped_settings__ = settings_cls  # type: ignore[attr-defined]  # for tests and docs
        cli_command.__annotations__ = {p.name: p.annotation for p in params}
        del cli_command.__wrapped__  # typer must read the generated signature, not run's
        return cli_command

    return wrap


def _is_argument(param: inspect.Parameter) -> bool:
    return isinstance(param.default, typer.models.ArgumentInfo)


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    extra = field_extra(field)
    kind, choices = cli_type(field.annotation, bool(extra.get("argument")))
    help_text = help_for(name, field)
    if extra.get("argument"):
        info: Any = typer.Argument(None, help=help_text, metavar=name.upper(), show_default=False)
    else:
        flag = flag_name(name, field)
        decls = [flag] if kind is not bool else [f"{flag}/{extra.get('negative') or '--no-' + flag[2:]}"]
        if extra.get("short"):
            decls.append(extra["short"])
        info = typer.Option(None, *decls, help=help_text, show_default=False)
        if choices:  # typer turns an Enum into a click.Choice: checked, listed and completed
            kind = enum.Enum(f"{name}_choice", [(c, c) for c in choices], type=str)
    annotation = kind if typing.get_origin(kind) is list else kind | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def cli_type(annotation: Any, positional: bool = False) -> tuple[Any, list[str] | None]:
    """(type the command line parses, choices): Literal → str choices; Annotated / Optional
    unwrapped; a list is several positional arguments, or one "a,b" text as an option."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) is Literal:
        return str, [str(v) for v in typing.get_args(annotation)]
    if typing.get_origin(annotation) is list:
        if not positional:
            return str, None
        return (list[Path], None) if _strip(typing.get_args(annotation)[0]) is Path else (list[str], None)
    if annotation in (bool, int, float, Path):
        return annotation, None
    return str, None


def _strip(annotation: Any) -> Any:
    """Annotated[X, ...] → X; X | None → X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return str
            annotation = args[0]
        else:
            return annotation


def help_for(name: str, field: FieldInfo) -> str:
    """The field's description, its bounds and its default, e.g. "Items per step; ≥ 1. [default: 64]"."""
    return f"{describe(field)} [{shown_default(name, field)}]"


def describe(field: FieldInfo) -> str:
    """The field's description with its bounds, e.g. "Items per step; ≥ 1."."""
    text = (field.description or "").rstrip()
    bounds = [f"{sign} {value:g}" for key, sign in _BOUNDS
              for meta in field.metadata if (value := getattr(meta, key, None)) is not None]
    if bounds:
        text = f"{text.rstrip('.')}; {', '.join(bounds)}."
    return text


def shown_default(name: str, field: FieldInfo) -> str:
    extra = field_extra(field)
    if "shown_default" in extra:
        return f"default: {extra['shown_default']}"
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool) and not extra.get("argument"):
        flag = flag_name(name, field)
        return f"default: {flag if default else extra.get('negative') or '--no-' + flag[2:]}"
    if default is None:
        return "default: none"
    if isinstance(default, list):
        return f"default: {','.join(map(str, default))}"
    return f"default: {default}"


def settings_of(cli_command: Any) -> type[CommandSettings] | None:
    """The settings model behind a generated command (also through typer's wrappers), else None."""
    callback = getattr(cli_command, "callback", cli_command)
    while callback is not None and not hasattr(callback, "__wrapped_settings__"):
        callback = getattr(callback, "__wrapped__", None)
    return getattr(callback, "__wrapped_settings__", None)


def leaf_commands(group: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, command) of every leaf command under a click/typer group, e.g. ("extract whisper", cmd)."""
    if hasattr(group, "commands"):
        return [leaf for name, sub in group.commands.items() for leaf in leaf_commands(sub, f"{path} {name}".strip())]
    return [(path, group)]
