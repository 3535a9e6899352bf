#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser.py): Playwright's own browser download cannot be used
# (its host is out of reach on a closed network), so the tests drive the `chromium` package at its path.
# Once per machine: exits 0 at once when the browser is there, else installs it with apt-get (root or
# passwordless sudo), quietly, running `apt-get update` first only if the install fails without it.
# Exits 1, printing why on stdout (one line), when it cannot: tests/run.sh then lets the browser tests skip
# with that reason, and the rest of the suite runs.
set -uo pipefail

CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no $CHROMIUM and no apt-get to install it: install Chromium and set CHROMIUM_PATH to its executable"
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "no $CHROMIUM, and this user cannot install it (not root, no passwordless sudo):" \
       "run 'apt-get install chromium' (Debian package chromium) as root"
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt() {  # a lock held by another apt waits a minute; a hung download gives up after five
  DEBIAN_FRONTEND=noninteractive timeout 300 "${as_root[@]}" apt-get -q -o DPkg::Lock::Timeout=60 "$@" >>"$log" 2>&1
}
echo "== installing Debian's chromium for the browser tests (once per machine)" >&2
if ! apt install -y --no-install-recommends chromium; then
  apt update && apt install -y --no-install-recommends chromium
fi
if [ ! -x "$CHROMIUM" ]; then
  why=$(grep -E '^(E|W): ' "$log" | tail -n 2 | tr '\n' ' ')
  echo "'apt-get install chromium' did not give $CHROMIUM: ${why:-$(tail -n 1 "$log")}"
  exit 1
fi
exit 0
