#!/usr/bin/env bash
# Installs lens with its test dependencies into .venv, then runs the whole test suite.
source "$(dirname "$0")/_venv.sh" dev
# HTML tests open lens's pages in a headless browser (Debian's chromium + chromedriver, driven by selenium from
# the dev extra). Install it where we can (root with apt-get); elsewhere those tests skip with the reason.
if [ -z "${LENS_NO_BROWSER_INSTALL:-}" ] && ! command -v chromedriver >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
    || echo "note: could not install chromium; the browser tests will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
