#!/usr/bin/env bash
# Copy the Gateway API CRDs the gateway router is tested against from the Go module sigs.k8s.io/gateway-api
# (its config/crd/{standard,experimental}/) into tests/fixtures/gateway-api/VERSION/, never by hand, and record
# the module's checksum and each file's sha256 (tests/infra/test_gateway.py checks both against the copies).
set -euo pipefail
VERSION="${1:-v1.6.3}"
KINDS=(gatewayclasses gateways httproutes grpcroutes)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/tests/fixtures/gateway-api/$VERSION"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
INFO="$(cd /tmp && "$GO" mod download -json "sigs.k8s.io/gateway-api@$VERSION")"
DIR="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' <<<"$INFO")"
SUM="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["Sum"])' <<<"$INFO")"
rm -rf "$DEST"
for channel in standard experimental; do
  mkdir -p "$DEST/$channel"
  for kind in "${KINDS[@]}"; do
    install -m 0644 "$DIR/config/crd/$channel/gateway.networking.k8s.io_$kind.yaml" "$DEST/$channel/"
  done
done
{
  echo "# sigs.k8s.io/gateway-api $VERSION $SUM (go mod download -json), config/crd/CHANNEL/ copied by scripts/gateway_api_crds.sh"
  (cd "$DEST" && sha256sum */*.yaml)
} > "$DEST/SHA256SUMS"
echo "copied $(ls "$DEST"/*/*.yaml | wc -l) CRDs of sigs.k8s.io/gateway-api $VERSION to $DEST"
