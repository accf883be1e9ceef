"""A small Kubernetes REST client (requests + client certificates) for the local cluster and its tests.

Objects are applied the way pulumi-kubernetes 4.x applies them by default: server-side apply, a PATCH with
`application/apply-patch+yaml` and a field manager, so the API server runs its defaulting, validation and
admission (Pod Security included) on exactly what the stack would send. Resource paths come from the
server's discovery documents, so custom resources work once their CRD is established.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

FIELD_MANAGER = "mlserve"
TIMEOUT_S = 30.0


class KubeAPIError(RuntimeError):
    """The API server refused a request; `status` is the HTTP code, the message the server's own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class KubeAPI:
    def __init__(self, server: str, *, ca: Path, cert: Path, key: Path) -> None:
        self.server = server.rstrip("/")
        self.session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE (set on many machines) overrides `verify` and our CA is never used.
        self.session.trust_env = False
        self.session.verify = str(ca)
        self.session.cert = (str(cert), str(key))
        self._resources: dict[str, dict[str, dict[str, Any]]] = {}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.server + path, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as err:
            raise KubeAPIError(0, f"{method} {path}: {err}") from err
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise KubeAPIError(response.status_code, message)
        return response.json() if response.content else None

    def ready(self) -> bool:
        try:
            return self.session.get(self.server + "/readyz", timeout=TIMEOUT_S).status_code == 200
        except requests.RequestException:
            return False

    def server_version(self) -> dict[str, str]:
        return self._request("GET", "/version")

    def _resource(self, api_version: str, kind: str) -> dict[str, Any]:
        """Discovery entry for `kind` in `api_version` (name, namespaced), re-read once on a miss."""
        for fresh in (False, True):
            if fresh or api_version not in self._resources:
                base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
                try:
                    listing = self._request("GET", base)["resources"]
                except KubeAPIError as err:
                    if err.status != 404:
                        raise
                    listing = []
                self._resources[api_version] = {r["kind"]: r for r in listing if "/" not in r["name"]}
            if kind in self._resources[api_version]:
                return self._resources[api_version][kind]
        raise KubeAPIError(404, f"the server serves no {kind} in {api_version}")

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        resource = self._resource(api_version, kind)
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if resource["namespaced"] and namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{resource['name']}"
        return path + (f"/{name}" if name else "")

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._request("GET", self.path(api_version, kind, namespace, name))

    def exists(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        try:
            self.get(api_version, kind, name, namespace)
        except KubeAPIError as err:
            if err.status == 404:
                return False
            raise
        return True

    def list(self, api_version: str, kind: str, namespace: str | None = None, **params: str) -> list[dict[str, Any]]:
        return self._request("GET", self.path(api_version, kind, namespace), params=params)["items"]

    def apply(self, manifest: dict[str, Any], *, dry_run: bool = False, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply `manifest` (force: we own every field we set); returns the object as stored."""
        metadata = manifest["metadata"]
        path = self.path(manifest["apiVersion"], manifest["kind"], metadata.get("namespace"), metadata["name"])
        params = {"fieldManager": field_manager, "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        return self._request("PATCH", path, params=params, data=json.dumps(manifest),
                             headers={"Content-Type": "application/apply-patch+yaml"})

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        metadata = manifest["metadata"]
        path = self.path(manifest["apiVersion"], manifest["kind"], metadata.get("namespace"))
        return self._request("POST", path, json=manifest)

    def evict(self, pod: str, namespace: str) -> None:
        """Ask the Eviction API to evict `pod` (as `kubectl drain` does); 429 when a PodDisruptionBudget forbids it now."""
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
        self._request("POST", self.path("v1", "Pod", namespace, pod) + "/eviction", json=body)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        self._request("DELETE", self.path(api_version, kind, namespace, name))
