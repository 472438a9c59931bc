"""Every `wealy ...` command line in the README names a real command and only real options."""

from __future__ import annotations

import re

from helpers.cli import REPO, run_wealy

GROUPS = {"extract": ("whisper", "sbert", "clews"), "models": ("list", "download", "upload", "import"),
          "store": ("info", "verify", "show"), "index": ("build", "add", "info")}


def readme_commands() -> list[list[str]]:
    blocks, current, lang = [], None, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.search(r"(?:^|\s|=\S+\s)(?:\.venv/bin/)?wealy\s+(.*)", line)
            if match and not line.startswith(("make", "python")):
                commands.append(match.group(1).split())
    return commands


def command_path(words: list[str]) -> tuple[str, ...]:
    head = words[0]
    if head in GROUPS and len(words) > 1 and words[1] in GROUPS[head]:
        return head, words[1]
    return (head,)


def test_readme_commands_use_real_options():
    commands = readme_commands()
    assert len(commands) > 30
    helps: dict[tuple[str, ...], str] = {}
    for words in commands:
        if words[0].startswith("-") or words[0] in ("COMMAND",):
            continue  # `wealy --install-completion`, `wealy COMMAND --help`
        path = command_path(words)
        if path not in helps:
            proc = run_wealy(*path, "--help")
            assert proc.returncode == 0, (path, proc.stderr)
            helps[path] = proc.stdout
        for token in words[len(path):]:
            option = token.split("=", 1)[0]
            if option.startswith("--") and option.strip("[]|") == option:
                assert re.search(rf"{re.escape(option)}\b", helps[path]), f"wealy {' '.join(path)}: {option}"


def test_readme_results_tables_are_generated_from_their_json():
    """Every results table in the README is the rendering of docs/results/NAME.json (no number
    typed by hand), and each has its JSON."""
    import json
    import subprocess
    import sys

    text = (REPO / "README.md").read_text()
    names = re.findall(r"<!-- results:([\w-]+) -->", text)
    assert {"demo", "quality"} <= set(names)
    for name in names:
        rows = json.loads((REPO / "docs" / "results" / f"{name}.json").read_text())["rows"]
        assert rows and all("map" in row for row in rows)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
