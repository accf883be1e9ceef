#!/usr/bin/env bash
# Installs what mlserve needs on a fresh Debian machine: Debian tools (prometheus/promtool, openssl,
# haproxy, wrk, shellcheck) when missing, then a virtualenv with the exact pins of requirements.txt.
set -euo pipefail
venv=${1:-.venv}
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)  # Debian puts it in /usr/sbin
command -v wrk >/dev/null || need+=(wrk)
command -v shellcheck >/dev/null || need+=(shellcheck)  # actionlint checks `run:` scripts with it
command -v openssl >/dev/null || need+=(openssl)  # certificates of the local cluster (make cluster)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to apt-get install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's prometheus package starts a system service on port 9090; tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r requirements.txt
# The CrossGuard pack's SDK, without its protobuf~=5.29 pin (see policy/requirements.txt).
"$venv/bin/pip" install -q --no-deps -r policy/requirements.txt
# checkov (tests/infra/test_checkov.py) in its own virtualenv: its dependencies are not ours to pin.
checkov_venv=build/venv-checkov
if ! "$checkov_venv/bin/pip" freeze 2>/dev/null | grep -qxF "$(grep -i '^checkov==' scripts/requirements-checkov.txt)"; then
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q -r scripts/requirements-checkov.txt
fi
# actionlint checks .github/workflows in the tests; built from its Go module at a pinned version.
ACTIONLINT_VERSION=v1.7.12
if ! "$venv/bin/actionlint" -version 2>/dev/null | grep -qx "$ACTIONLINT_VERSION"; then
  command -v go >/dev/null || { echo "setup: need Go (1.24+) to build actionlint $ACTIONLINT_VERSION" >&2; exit 1; }
  GOBIN="$(cd "$venv/bin" && pwd)" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
