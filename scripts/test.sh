#!/usr/bin/env bash
# Runs every test of the workspace. On a fresh machine it first installs what
# the tests start by themselves: redis-server and redis-cli (for the tests'
# Redis Cluster; Debian/Ubuntu apt or Homebrew), curl and jq (for the README's
# examples), Debian's chromium (for the browser test), the MongoDB-compatible test
# server `secantusd-py` (PyPI package `secantusdb`), `schemathesis`,
# `playwright` and `standardwebhooks` (all into ./.venv). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECANTUSDB_VERSION="0.7.0b3"
SCHEMATHESIS_VERSION="4.32.5"
PLAYWRIGHT_VERSION="1.65.3"
STANDARDWEBHOOKS_VERSION="1.3.0"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# redis-server for the tests' own servers and redis-cli to join them into a
# Redis Cluster; curl and jq for the README's examples, which a test runs.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
# Debian's chromium for the browser test (api/tests/browser.rs), driven by
# Playwright; Playwright's own browser download is not used.
if [ -z "${CRM_TEST_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  if command -v apt-get >/dev/null 2>&1; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    # Homebrew's redis has both redis-server and redis-cli.
    brew install "${missing[@]/#redis-*/redis}"
  else
    echo "test.sh: install ${missing[*]} and run again" >&2
    exit 1
  fi
fi

if [ -z "${CRM_TEST_MONGODB_URI:-}" ] && ! command -v secantusd-py >/dev/null 2>&1 \
  && [ ! -x .venv/bin/secantusd-py ]; then
  echo "test.sh: installing secantusdb ${SECANTUSDB_VERSION} into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "secantusdb==${SECANTUSDB_VERSION}"
fi
# schemathesis checks that openapi.yaml says what the server does
# (api/tests/contract.rs).
if ! command -v schemathesis >/dev/null 2>&1 && [ ! -x .venv/bin/schemathesis ]; then
  echo "test.sh: installing schemathesis ${SCHEMATHESIS_VERSION} into .venv" >&2
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==${SCHEMATHESIS_VERSION}"
fi
# Playwright drives chromium in api/tests/browser.rs.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import playwright" >/dev/null 2>&1; then
  echo "test.sh: installing playwright ${PLAYWRIGHT_VERSION} into .venv" >&2
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "playwright==${PLAYWRIGHT_VERSION}"
fi
# The reference Standard Webhooks library verifies our webhook signatures
# (api/tests/webhooks.rs).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import standardwebhooks" >/dev/null 2>&1; then
  echo "test.sh: installing standardwebhooks ${STANDARDWEBHOOKS_VERSION} into .venv" >&2
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "standardwebhooks==${STANDARDWEBHOOKS_VERSION}"
fi
if [ -d .venv ]; then
  export CRM_TEST_VENV="${CRM_TEST_VENV:-$PWD/.venv}"
fi

cargo test --workspace --locked "$@"
