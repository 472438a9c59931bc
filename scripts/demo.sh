#!/usr/bin/env bash
# `make demo`: the whole pipeline on the bundled collection, fully offline (see `wealy demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/wealy demo "$@"
