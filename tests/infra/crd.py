"""Validate a rendered custom resource against the real CRD schema in ../shared/schemas/crds/.

`validate_against_crd(manifest)` picks the CRD by the manifest's apiVersion (group/version) and kind, takes
the openAPIV3Schema of that served version, closes every object schema that lists `properties` (and does
not carry `x-kubernetes-preserve-unknown-fields`) so unknown fields are rejected as the API server's
strict field validation would, and raises AssertionError naming the path of the first error. Without the
schema folder the calling test is skipped with the reason. Gateway API objects are checked against the CRDs
in the repository's fixtures (tests/fixtures/gateway-api/, copied from the Go module), of the channel asked for.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from engine.cluster import GATEWAY_API_VERSION
from tests.infra.conftest import SCHEMA_DIR

PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "gateway-api" / GATEWAY_API_VERSION
GATEWAY_API_CHANNELS = ("standard", "experimental")


@lru_cache(maxsize=None)
def crd_index(schema_dir: Path = SCHEMA_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """Every CRD document in `schema_dir`, by (group, kind)."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(schema_dir.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                spec = document["spec"]
                index[(spec["group"], spec["names"]["kind"])] = document
    return index


def strict(schema: Any) -> Any:
    """A copy of `schema` where every object with `properties` rejects properties it does not list."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {name: strict(value) for name, value in schema.items()}
    if "properties" in schema and not schema.get(PRESERVE_UNKNOWN) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


@lru_cache(maxsize=None)
def _validator(group: str, version: str, kind: str, schema_dir: Path = SCHEMA_DIR) -> jsonschema.protocols.Validator:
    crd = crd_index(schema_dir).get((group, kind))
    assert crd is not None, (
        f"no CRD for {kind} in group {group!r} under {schema_dir}; present: {sorted(crd_index(schema_dir))}"
    )
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind} CRD serves versions {sorted(served)}, not {version!r}"
    schema = copy.deepcopy(served[version]["schema"]["openAPIV3Schema"])
    # The API server fills apiVersion, kind and metadata itself; the CRD schema leaves metadata open.
    return jsonschema.Draft7Validator(strict(schema))


def validate_against_crd(manifest: dict, channel: str = "standard") -> None:
    """Raise AssertionError naming the path of the first schema error; skip the test without the CRD folder.
    A Gateway API object is checked against the fixtures' CRDs of `channel` (standard or experimental)."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    if group == GATEWAY_API_GROUP:
        assert channel in GATEWAY_API_CHANNELS, f"Gateway API channels are {GATEWAY_API_CHANNELS}, not {channel!r}"
        schema_dir = GATEWAY_API_CRDS / channel
    else:
        schema_dir = SCHEMA_DIR
    if not schema_dir.is_dir():
        pytest.skip(f"CRD schemas not found at {schema_dir} (copies of the CRDs live in ../shared/schemas/crds)")
    validator = _validator(group, version, manifest["kind"], schema_dir)
    errors = sorted(validator.iter_errors(manifest), key=lambda error: list(error.absolute_path))
    if errors:
        first = errors[0]
        path = ".".join(str(part) for part in first.absolute_path) or "<root>"
        name = (manifest.get("metadata") or {}).get("name", "?")
        raise AssertionError(
            f"{manifest['kind']} {name}: {path}: {first.message} ({len(errors)} schema error(s) in all)"
        )
