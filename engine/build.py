"""Build the control-plane binaries with `go build` from `engine/kubernetes/`, cached by version.

The wrapper module requires k8s.io/kubernetes with its staging modules pointed at the published v0.x
modules, and lists the three main packages as `tool` directives so go.sum covers them. The binaries land
in `$MLSERVE_ENGINE_CACHE` (default ~/.cache/mlserve-engine)/kubernetes-VERSION-etcd-VERSION/, so a second
build only checks that they are there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent / "kubernetes"
KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
# Binary name -> the main package it is built from.
COMMANDS = {
    "etcd": ETCD_MODULE,
    "kube-apiserver": f"{KUBERNETES_MODULE}/cmd/kube-apiserver",
    "kube-controller-manager": f"{KUBERNETES_MODULE}/cmd/kube-controller-manager",
}
# Without these the API server reports version 0.0 (hack/lib/version.sh sets the same variables).
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


class EngineError(RuntimeError):
    """The engine could not be built or found; the message says what to do."""


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str

    @property
    def key(self) -> str:
        return f"kubernetes-{self.kubernetes}-etcd-{self.etcd}"


def module_version(go_mod: str, module: str) -> str:
    """The version `go_mod` requires of `module` (a `require` line or an entry of a `require (...)` block)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise EngineError(f"{MODULE_DIR / 'go.mod'} requires no version of {module}")
    return match.group(1)


def pinned_versions() -> Versions:
    go_mod = (MODULE_DIR / "go.mod").read_text()
    return Versions(kubernetes=module_version(go_mod, KUBERNETES_MODULE), etcd=module_version(go_mod, ETCD_MODULE))


def cache_root() -> Path:
    return Path(os.environ.get("MLSERVE_ENGINE_CACHE") or Path.home() / ".cache" / "mlserve-engine")


def bin_dir(versions: Versions | None = None) -> Path:
    """Where the binaries of the pinned versions are (or will be) cached."""
    return cache_root() / (versions or pinned_versions()).key


def missing_binaries(directory: Path | None = None) -> list[str]:
    directory = directory or bin_dir()
    return [name for name in COMMANDS if not os.access(directory / name, os.X_OK)]


def version_ldflags(kubernetes_version: str) -> str:
    major, minor = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", kubernetes_version).groups()
    flags = ["-s", "-w"]
    for package in VERSION_PACKAGES:
        flags += [
            f"-X {package}.gitVersion={kubernetes_version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def build(log=print) -> Path:
    """Build whatever binary of the pinned versions is not cached yet; returns the directory holding them."""
    versions = pinned_versions()
    target = bin_dir(versions)
    if not missing_binaries(target):
        log(f"engine: cached in {target}")
        return target
    go = shutil.which("go")
    if go is None:
        raise EngineError("`go` is not on PATH: install Go 1.24 or newer to build the engine")
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    started = time.monotonic()
    log(f"engine: building {', '.join(COMMANDS)} (Kubernetes {versions.kubernetes}, etcd {versions.etcd}); "
        "the first build downloads the modules and takes a while")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        command = [go, "build", "-trimpath", "-ldflags", version_ldflags(versions.kubernetes), "-o", scratch + "/",
                   *COMMANDS.values()]
        result = subprocess.run(command, cwd=MODULE_DIR, env=env)
        if result.returncode != 0:
            raise EngineError(f"go build failed (exit {result.returncode}) in {MODULE_DIR}")
        # The etcd main package is its module's root, `.../server/v3`: go names the binary `server`.
        built = {"etcd": Path(scratch) / "server", **{name: Path(scratch) / name for name in COMMANDS if name != "etcd"}}
        staged = Path(scratch) / "bin"
        staged.mkdir()
        for name, path in built.items():
            path.rename(staged / name)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)  # atomic: a concurrent reader sees all three binaries or none
    log(f"engine: built in {time.monotonic() - started:.0f} s into {target}")
    return target
