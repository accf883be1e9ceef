"""Build the engine's binaries with `go build` from the wrapper modules beside this file, cached by version.

Four wrapper modules, each a `go.mod` (and `go.sum`) that pins what it builds:

- `kubernetes/`: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, k8s.io/kubernetes with its
  staging modules pointed at the published v0.x modules;
- `kwok/`: kwok, which registers fake nodes and drives the pods scheduled on them to Running and Ready;
- `pulumi/`: the Pulumi CLI, `github.com/pulumi/pulumi/pkg/v3/cmd/pulumi`;
- `pulumi-kubernetes/`: the Kubernetes provider `pulumi-resource-kubernetes`. Its main package embeds a schema
  that the release process generates (`cmd/pulumi-resource-kubernetes/generate.go`); the module cache is
  read-only, so the build copies that package into `pulumi-kubernetes/provider/` and writes the embedded files
  the way generate.go does.

Each group lands in `$MLSERVE_ENGINE_CACHE` (default ~/.cache/mlserve-engine)/GROUP-VERSION.../, so a second
build only checks that the binaries are there. Every build shares Go's one build cache (`go env GOCACHE`), so
the packages the groups have in common compile once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ENGINE_DIR = Path(__file__).resolve().parent
MODULE_DIR = ENGINE_DIR / "kubernetes"
KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KWOK_MODULE = "sigs.k8s.io/kwok"
PULUMI_MODULE = "github.com/pulumi/pulumi/pkg/v3"
PROVIDER_MODULE = "github.com/pulumi/pulumi-kubernetes/provider/v4"
# The proxy serves the provider only as a pseudo-version: the commit tagged v4.25.0 (the release the Python SDK
# `pulumi-kubernetes==4.25.0` in requirements.txt matches). The provider reports this version to the engine.
PROVIDER_RELEASE = "4.25.0"
# Binary name -> the main package it is built from, per wrapper module.
COMMANDS = {
    "etcd": ETCD_MODULE,
    "kube-apiserver": f"{KUBERNETES_MODULE}/cmd/kube-apiserver",
    "kube-controller-manager": f"{KUBERNETES_MODULE}/cmd/kube-controller-manager",
    "kube-scheduler": f"{KUBERNETES_MODULE}/cmd/kube-scheduler",
}
# Without these the API server reports version 0.0 (hack/lib/version.sh sets the same variables).
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
# The Automation API switches features by the CLI's version (`pulumi version`): a CLI without it misbehaves.
PULUMI_VERSION_VARIABLE = "github.com/pulumi/pulumi/sdk/v3/go/common/version.Version"
PROVIDER_VERSION_VARIABLE = f"{PROVIDER_MODULE}/pkg/version.Version"
KWOK_VERSION_VARIABLE = f"{KWOK_MODULE}/pkg/consts.Version"
PROVIDER_MAIN = "cmd/pulumi-resource-kubernetes"
PROVIDER_PACKAGE_DIR = "provider"  # inside pulumi-kubernetes/, generated and git-ignored


class EngineError(RuntimeError):
    """The engine could not be built or found; the message says what to do."""


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str

    @property
    def key(self) -> str:
        return f"kubernetes-{self.kubernetes}-etcd-{self.etcd}"


def module_version(go_mod: str, module: str, where: Path = MODULE_DIR) -> str:
    """The version `go_mod` requires of `module` (a `require` line or an entry of a `require (...)` block)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise EngineError(f"{where / 'go.mod'} requires no version of {module}")
    return match.group(1)


def pinned_versions() -> Versions:
    go_mod = (MODULE_DIR / "go.mod").read_text()
    return Versions(kubernetes=module_version(go_mod, KUBERNETES_MODULE), etcd=module_version(go_mod, ETCD_MODULE))


def cache_root() -> Path:
    return Path(os.environ.get("MLSERVE_ENGINE_CACHE") or Path.home() / ".cache" / "mlserve-engine")


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


@dataclass(frozen=True)
class Group:
    """Binaries built from one wrapper module: `commands` maps each binary to its main package."""

    name: str
    module_dir: Path
    commands: dict[str, str]
    key: Callable[[], str]
    ldflags: Callable[[], str]
    prepare: Callable[[Path], None] | None = field(default=None)

    def bin_dir(self) -> Path:
        return cache_root() / self.key()

    def missing(self) -> list[str]:
        directory = self.bin_dir()
        return [name for name in self.commands if not os.access(directory / name, os.X_OK)]


def _required(module_dir: Path, module: str) -> str:
    return module_version((module_dir / "go.mod").read_text(), module, module_dir)


def _pulumi_version() -> str:
    return _required(ENGINE_DIR / "pulumi", PULUMI_MODULE)


def _module_source(module_dir: Path, module: str) -> Path:
    """Where the module cache holds the version of `module` that `module_dir` requires (downloaded if absent)."""
    result = subprocess.run(["go", "mod", "download", "-json", module], cwd=module_dir, env=_go_env(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise EngineError(f"go mod download {module} failed in {module_dir}: {result.stderr.strip() or result.stdout}")
    return Path(json.loads(result.stdout)["Dir"])


def prepare_provider(module_dir: Path) -> None:
    """Copy the provider's main package out of the read-only module cache and write the two files it embeds,
    as its `generate.go` does (the schema with its `version` set; both JSON documents re-serialised compactly)."""
    source = _module_source(module_dir, PROVIDER_MODULE) / PROVIDER_MAIN
    package = module_dir / PROVIDER_PACKAGE_DIR
    package.mkdir(exist_ok=True)
    (package / "main.go").write_bytes((source / "main.go").read_bytes())
    schema = json.loads((source / "schema.json").read_text())
    schema["version"] = PROVIDER_RELEASE
    (package / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = json.loads((source / "terraform-mapping.json").read_text())
    (package / "terraform-mapping-embed.json").write_text(json.dumps(mapping, separators=(",", ":")))


GROUPS = (
    Group("kubernetes", MODULE_DIR, COMMANDS, key=lambda: pinned_versions().key,
          ldflags=lambda: version_ldflags(pinned_versions().kubernetes)),
    Group("kwok", ENGINE_DIR / "kwok", {"kwok": f"{KWOK_MODULE}/cmd/kwok"},
          key=lambda: f"kwok-{_required(ENGINE_DIR / 'kwok', KWOK_MODULE)}",
          ldflags=lambda: f"-s -w -X {KWOK_VERSION_VARIABLE}={_required(ENGINE_DIR / 'kwok', KWOK_MODULE)}"),
    Group("pulumi", ENGINE_DIR / "pulumi", {"pulumi": f"{PULUMI_MODULE}/cmd/pulumi"},
          # PATH-like layout ROOT/bin/pulumi: the Automation API's `PulumiCommand(root=ROOT)` runs ROOT/bin/pulumi.
          key=lambda: f"pulumi-{_pulumi_version()}/bin",
          ldflags=lambda: f"-s -w -X {PULUMI_VERSION_VARIABLE}={_pulumi_version()}"),
    Group("pulumi-kubernetes", ENGINE_DIR / "pulumi-kubernetes",
          {"pulumi-resource-kubernetes": f"./{PROVIDER_PACKAGE_DIR}"},
          key=lambda: f"pulumi-kubernetes-{PROVIDER_RELEASE}",
          ldflags=lambda: f"-s -w -X {PROVIDER_VERSION_VARIABLE}={PROVIDER_RELEASE}",
          prepare=prepare_provider),
)


def group(name: str) -> Group:
    return next(g for g in GROUPS if g.name == name)


def bin_dir(versions: Versions | None = None) -> Path:
    """Where the control plane's binaries of the pinned versions are (or will be) cached."""
    return cache_root() / (versions or pinned_versions()).key


def missing_binaries(directory: Path | None = None) -> list[str]:
    """The control-plane binaries not built yet."""
    directory = directory or bin_dir()
    return [name for name in COMMANDS if not os.access(directory / name, os.X_OK)]


def tool_path(name: str) -> Path:
    """The cached binary `name` of whichever group builds it; raises EngineError when it is not built."""
    for candidate in GROUPS:
        if name in candidate.commands:
            path = candidate.bin_dir() / name
            if not os.access(path, os.X_OK):
                raise EngineError(f"{name} is not built (looked for {path}): run `make engine`")
            return path
    raise EngineError(f"no engine group builds {name!r}")


def _go_env() -> dict[str, str]:
    return {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}


def build_group(spec: Group, go: str, log=print) -> Path:
    """Build `spec`'s binaries unless all are cached; returns their directory."""
    target = spec.bin_dir()
    if not spec.missing():
        log(f"engine: {spec.name} cached in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"engine: building {', '.join(spec.commands)} ({spec.key()}); a cold build downloads modules and takes minutes")
    if spec.prepare is not None:
        spec.prepare(spec.module_dir)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        staged = Path(scratch) / "bin"
        staged.mkdir()
        for name, package in spec.commands.items():
            command = [go, "build", "-trimpath", "-ldflags", spec.ldflags(), "-o", str(staged / name), package]
            result = subprocess.run(command, cwd=spec.module_dir, env=_go_env())
            if result.returncode != 0:
                raise EngineError(f"go build {package} failed (exit {result.returncode}) in {spec.module_dir}")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)  # atomic: a concurrent reader sees every binary of the group or none
    log(f"engine: built {spec.name} in {time.monotonic() - started:.0f} s into {target}")
    return target


def build(log=print) -> dict[str, Path]:
    """Build whatever binary of the pinned versions is not cached yet; returns each group's directory."""
    go = shutil.which("go")
    if go is None:
        raise EngineError("`go` is not on PATH: install Go 1.26 or newer to build the engine")
    return {spec.name: build_group(spec, go, log) for spec in GROUPS}
