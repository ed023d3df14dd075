#!/usr/bin/env bash
# Create the project's virtual environment and install owl-pipeline into it.
# Idempotent: a stamp of pyproject.toml + constraints skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${OWL_VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
STAMP="$VENV/.owl-install-stamp"
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)

# The HTML report's test renders the page in headless Chromium (Debian's package; root with apt only).
if [ "${OWL_SKIP_CHROMIUM:-0}" != 1 ] && ! [ -x /usr/bin/chromium ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  echo "installing Chromium for the report test (apt) ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "Chromium not installed: the report's browser test will be skipped" >&2
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/owl" ]; then
  exit 0
fi

quiet_pip() {
  # This machine's pip config names local indexes that may not exist; their warnings are noise.
  "$VENV/bin/pip" install --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

echo "setting up $VENV (torch CPU first, then the pinned set) ..."
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# torch first: any range that admits a newer torch would pull a multi-GB CUDA build.
quiet_pip torch==2.13.0
quiet_pip -c requirements/constraints.txt -e ".[pipeline,ray,dev]"
echo "$want" > "$STAMP"
echo "installed into $VENV"
