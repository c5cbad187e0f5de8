#!/usr/bin/env bash
# Installs what the benchmark needs beyond the Python venv: wrk (Debian package `wrk`, 4.1.0),
# the HTTP load generator `python -m bench.run` drives. Run as root: bench/setup.sh
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  echo "wrk is installed: $(command -v wrk)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "wrk is missing; run this script as root (it uses apt-get)" >&2
  exit 1
fi
apt-get update -qq
apt-get install -y -qq wrk
echo "wrk is installed: $(command -v wrk)"
