#!/usr/bin/env bash
# Installs lens into .venv, then runs its main job on the embedded default model.
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m lens demo "$@"
