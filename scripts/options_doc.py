"""Write docs/options.md: every command's settings (flag, environment variable, default,
description), generated from the settings models, so the reference is never typed by hand.

    python scripts/options_doc.py            # rewrite docs/options.md
    python scripts/options_doc.py --check    # exit 1 if docs/options.md is out of date (tests use it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "options.md"


def render() -> str:
    import typer.main

    from wealy_cli.cli import app
    from wealy_cli.commands.params import describe, leaf_commands, settings_of, shown_default
    from wealy_cli.core.settings import ENV_PREFIX, field_extra, flag_name, ordered_fields

    lines = ["# Command-line options", "",
             "Generated from the settings models by `scripts/options_doc.py`; `wealy COMMAND --help` shows the same.",
             f"Every option can also come from the environment (`{ENV_PREFIX}<NAME>`) or a `--config` YAML file",
             "(top level, or a section named after the command); a flag wins over the environment, which wins",
             "over the file, which wins over the default.", ""]
    for path, command in leaf_commands(typer.main.get_command(app)):
        settings = settings_of(command)
        if settings is None:
            continue
        lines += [f"## `wealy {path}`", "", (command.help or "").strip().split("\n\n")[0].replace("\n", " "), "",
                  "| option | environment | default | description |", "|---|---|---|---|"]
        for name, field in ordered_fields(settings):
            flag = flag_name(name, field)
            if field_extra(field).get("short"):
                flag = f"{field_extra(field)['short']}, {flag}"
            env = "" if flag.startswith("argument") else f"`{ENV_PREFIX}{name.upper()}`"
            default = shown_default(name, field).removeprefix("default: ")
            text = describe(field).replace("|", "\\|")
            lines.append(f"| `{flag}` | {env} | {default} | {text} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that docs/options.md is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT} is out of date: run python scripts/options_doc.py")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
