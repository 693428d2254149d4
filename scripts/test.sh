#!/usr/bin/env bash
# Installs lens with its test dependencies into .venv, then runs the whole test suite.
source "$(dirname "$0")/_venv.sh" dev
exec .venv/bin/python -m pytest "$@"
