#!/usr/bin/env bash
# The whole test suite on a fresh Debian / Raspberry Pi OS box: installs Mosquitto and Chromium (apt),
# creates .venv, installs explaincam with every extra, runs pytest. Extra args go to every pytest run:
# the independent tests in parallel, one worker more than cores (pytest-xdist; TEST_WORKERS overrides; each
# file stays on one worker, so its module fixtures are built once), then the timing-sensitive tests (marker
# `timing`: tests/faults/ and the files tests/conftest.py names) away from that load: two at a time those that
# mostly wait on brokers, retries and signals, then one at a time those that load both cores themselves (marker
# `alone`: the bench, the soak, the request flood).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
# Chromium (headless) loads the snapshot page in tests/daemon/test_snapshot_page.py.
if ! command -v mosquitto >/dev/null || ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients openssl chromium
  # The packaged broker is not needed as a service: tests start their own on loopback.
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
# Java runs pycocoevalcap's METEOR scorer and PTB tokenizer (tests/convert/test_captionscore.py).
if ! command -v java >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq default-jre-headless
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'
status=0
# One worker more than cores: the tests wait on subprocesses, brokers and sleeps a third of the time.
# Files are dealt out in collection order (--no-loadscope-reorder), the longest first (tests/conftest.py).
.venv/bin/python -m pytest -n "${TEST_WORKERS:-$(( $(nproc) + 1 ))}" --dist loadfile --no-loadscope-reorder -m "not timing" "$@" || status=$?
timing=0
.venv/bin/python -m pytest -n 2 --dist loadfile -m "timing and not alone" "$@" || timing=$?
alone=0
.venv/bin/python -m pytest -p no:xdist -m alone "$@" || alone=$?
# exit 5: no test was selected (e.g. args naming other tests only)
for part in status timing alone; do [ "${!part}" -eq 5 ] && printf -v "$part" 0; done
exit $(( status != 0 ? status : timing != 0 ? timing : alone ))
