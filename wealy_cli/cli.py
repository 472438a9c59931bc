"""The ``wealy`` command: one Typer app; each subcommand lives in ``wealy_cli/commands/``."""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.exceptions import Abort, Exit, TyperException

from wealy_cli import __version__
from wealy_cli.commands import baselines, demo, distances, evaluate, extract, fuse, index, models, search, store, train
from wealy_cli.core import ui
from wealy_cli.core.errors import UserError

app = typer.Typer(
    name="wealy",
    help="Audio-based lyrics matching with Whisper embeddings (WEALY): extract, train, evaluate, fuse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: x]" literally
    context_settings={"help_option_names": ["-h", "--help"]},
)
for sub_app in (extract.app, models.app, store.app, index.app):
    sub_app.rich_markup_mode = None
app.add_typer(extract.app, name="extract")
app.add_typer(models.app, name="models")
app.add_typer(store.app, name="store")
app.add_typer(index.app, name="index")
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("distances")(distances.distances)
app.command("baselines")(baselines.baselines)
app.command("fuse")(fuse.fuse)
app.command("search")(search.search)
app.command("demo")(demo.demo)

GLOBAL_FLAGS = ("--debug", "--quiet")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wealy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also WEALY_DEBUG=1). "
                               "May be given anywhere on the command line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or step messages "
                               "(results are still printed). May be given anywhere on the command line."),
) -> None:
    ui.set_quiet(quiet)


def _hoist_global_flags(argv: list[str]) -> list[str]:
    """Let --debug / --quiet stand anywhere: move them before the subcommand."""
    flags = [a for a in argv if a in GLOBAL_FLAGS or a == "-q"]
    rest = [a for a in argv if a not in flags]
    return flags + rest


def _fail(message: str, debug: bool, code: int = 2) -> int:
    if debug:
        traceback.print_exc()
    ui.console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv or os.environ.get("WEALY_DEBUG", "") not in ("", "0")
    try:
        result = app(args=argv, prog_name="wealy", standalone_mode=False)
        return int(result or 0)
    except Exit as stop:
        return stop.exit_code
    except TyperException as err:  # usage errors: unknown command/option, bad choice, missing argument
        if type(err).__name__ == "NoArgsIsHelpError":  # `wealy` or `wealy store` alone: show the help
            typer.echo(err.format_message())
            return 0
        if getattr(err, "exit_code", 2) == 0:
            return 0
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _fail(err.format_message() + hint, debug)
    except Abort:
        return _fail("interrupted", debug, code=130)
    except KeyboardInterrupt:
        return _fail("interrupted; rerun the same command to resume", debug, code=130)
    except UserError as err:
        # Library modules raise UserError subclasses (DatasetError, StoreError, ...) for bad input;
        # a process of a multi-process run may carry another rank's exit code, or leave the saying
        # to rank 0 (``quiet``: they share a terminal).
        code = int(getattr(err, "exit_code", 2))
        if getattr(err, "quiet", False):
            return code
        return _fail(str(err) or type(err).__name__, debug, code=code)
    except Exception as err:  # a bug, not the user's fault: say so, keep the message short
        return _fail(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
                     debug, code=1)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
