#!/usr/bin/env bash
# Lint and type-check: the same checks locally and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check services tests training bench
mypy
