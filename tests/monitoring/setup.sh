#!/usr/bin/env bash
# Installs Debian's `prometheus` package (it brings `promtool`) for tests/test_prometheus.py.
# Idempotent: when both binaries are on PATH it only reports their versions.
#
# The package ships an init script and a systemd unit that would run a Prometheus daemon on
# 0.0.0.0:9090 (the metrics plugin's default port). The install runs under a policy-rc.d that
# forbids service starts, and afterwards the service is stopped and disabled in case any init
# system started it anyway, so nothing is left running. Needs root (CI runs as root) and
# access to Debian's package mirror; exits non-zero with a message otherwise.
set -euo pipefail

say() { printf 'monitoring-setup: %s\n' "$*"; }
die() { printf 'monitoring-setup: ERROR: %s\n' "$*" >&2; exit 1; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    say "$(prometheus --version 2>&1 | head -n1)"
    say "promtool at $(command -v promtool)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "prometheus is not installed and this is not root: run as root, or \
apt-get install --no-install-recommends prometheus"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install Prometheus 2.x \
(prometheus and promtool on PATH) by other means"

POLICY=/usr/sbin/policy-rc.d
SAVED=""
restore_policy() {
    if [ -n "$SAVED" ]; then
        mv -f "$SAVED" "$POLICY"
    else
        rm -f "$POLICY"
    fi
}
if [ -e "$POLICY" ]; then
    SAVED="$(mktemp)"
    cp -p "$POLICY" "$SAVED"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# installed by tests/monitoring/setup.sh: no service starts\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"

say "apt-get update"
DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
say "apt-get install -y --no-install-recommends prometheus"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus >/dev/null \
    || die "apt-get install prometheus failed"

# No daemon must outlive the install: stop and disable whatever init system is present.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
    systemctl disable prometheus.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

command -v prometheus >/dev/null 2>&1 || die "prometheus is still not on PATH after the install"
command -v promtool >/dev/null 2>&1 || die "promtool is still not on PATH after the install"
say "installed $(prometheus --version 2>&1 | head -n1)"
