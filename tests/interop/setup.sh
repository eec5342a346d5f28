#!/usr/bin/env bash
# Installs the official Resonate SDKs that the interop suite drives, outside the project's
# own virtual environment:
#   .interop/py312/                  Python 3.12 venv with resonate-sdk==0.8.1
#   tests/interop/ts/node_modules/   @resonatehq/sdk@0.11.5 (npm ci from package-lock.json)
# Idempotent: a second run only checks what is there. Exits non-zero, with a message, when
# python3.12, node or npm is missing or an install fails.
#
# Environment: PYTHON312 (path of a python3.12 to use), INTEROP_SDK_DIR (default
# <repo>/.interop).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
INTEROP_DIR="${INTEROP_SDK_DIR:-$ROOT/.interop}"
VENV="$INTEROP_DIR/py312"
TS_DIR="$HERE/ts"
PY_SDK="resonate-sdk"
PY_SDK_VERSION="0.8.1"
TS_SDK="@resonatehq/sdk"
TS_SDK_VERSION="0.11.5"

say() { printf 'interop-setup: %s\n' "$*"; }
die() { printf 'interop-setup: ERROR: %s\n' "$*" >&2; exit 1; }

# A candidate counts only if it runs and reports 3.12 (a pyenv shim can exist and still fail
# with "command not found").
is_py312() {
    [ -n "$1" ] && [ -x "$1" ] || return 1
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1
}

find_python312() {
    local c
    c="$(command -v python3.12 2>/dev/null || true)"
    if is_py312 "$c"; then echo "$c"; return 0; fi
    if command -v pyenv >/dev/null 2>&1; then
        local proot
        proot="$(pyenv root 2>/dev/null || true)"
        for c in "$proot"/versions/3.12*/bin/python3.12; do
            if is_py312 "$c"; then echo "$c"; return 0; fi
        done
    fi
    for c in /root/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 \
        /usr/bin/python3.12; do
        if is_py312 "$c"; then echo "$c"; return 0; fi
    done
    return 1
}

# --- Python SDK -------------------------------------------------------------------------------
if is_py312 "$VENV/bin/python" \
    && [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("resonate-sdk"))' 2>/dev/null)" = "$PY_SDK_VERSION" ]; then
    say "python: $VENV already has $PY_SDK==$PY_SDK_VERSION"
else
    if [ -n "${PYTHON312:-}" ]; then
        is_py312 "$PYTHON312" || die "PYTHON312=$PYTHON312 is not a working Python 3.12"
        PY312="$PYTHON312"
    else
        PY312="$(find_python312)" || die "Python 3.12 not found (tried \$PYTHON312, python3.12 on \
PATH, \$(pyenv root)/versions/3.12*, /root/.pyenv/versions/3.12*). Install CPython 3.12 or \
set PYTHON312=/path/to/python3.12."
    fi
    say "python: using $PY312 ($("$PY312" --version 2>&1))"
    if ! is_py312 "$VENV/bin/python"; then
        rm -rf "$VENV"
        mkdir -p "$INTEROP_DIR"
        "$PY312" -m venv "$VENV" || die "could not create the venv $VENV"
        say "python: created venv $VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$PY_SDK==$PY_SDK_VERSION" \
        || die "pip install $PY_SDK==$PY_SDK_VERSION failed"
    say "python: installed $PY_SDK==$PY_SDK_VERSION into $VENV"
fi
"$VENV/bin/python" -c 'import resonate.resonate' || die "the Python SDK does not import"

# --- TypeScript SDK ---------------------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node not found on PATH (Node.js >= 20 is required)"
command -v npm >/dev/null 2>&1 || die "npm not found on PATH"
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
[ "$NODE_MAJOR" -ge 20 ] || die "node $(node --version) is too old: Node.js >= 20 is required"
say "node: $(node --version), npm $(npm --version)"

installed_ts_version() {
    node -p "require('$TS_DIR/node_modules/@resonatehq/sdk/package.json').version" 2>/dev/null || true
}
STAMP="$TS_DIR/node_modules/.interop-installed"
if [ "$(installed_ts_version)" = "$TS_SDK_VERSION" ] && [ -f "$STAMP" ] \
    && [ "$STAMP" -nt "$TS_DIR/package-lock.json" ]; then
    say "node: $TS_DIR/node_modules already has $TS_SDK@$TS_SDK_VERSION"
else
    cd "$TS_DIR"
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed in $TS_DIR"
    else
        npm install --no-audit --no-fund --loglevel=error || die "npm install failed in $TS_DIR"
    fi
    [ "$(installed_ts_version)" = "$TS_SDK_VERSION" ] \
        || die "$TS_SDK is $(installed_ts_version), expected $TS_SDK_VERSION"
    touch "$STAMP"
    say "node: installed $TS_SDK@$TS_SDK_VERSION into $TS_DIR/node_modules"
fi
say "ready"
