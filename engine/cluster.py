"""A local cluster on loopback whose pods become Ready: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, with no kubelet and no container runtime.

`start(state_dir)` makes a CA and certificates with openssl, starts the processes on free loopback ports (RBAC
and the Pod Security admission on), waits until the API server is ready and the controller manager has created
the `default` ServiceAccount, installs the CRDs the stack uses (the shared schema folder's and the Gateway
API's), registers fake nodes (a CPU pool and a GPU pool whose nodes carry the GPU resource, labels and
taints of `NodePools`), writes a kubeconfig and records the pids in STATE_DIR/cluster.json. kube-scheduler places pods on the nodes their selectors and tolerations allow; kwok
(sigs.k8s.io/kwok) keeps the fake nodes Ready, gives each scheduled pod an IP and drives it to Running and Ready
(its default pod stages), and gives each LoadBalancer Service an ingress address (`LOAD_BALANCER_STAGE`, the
part a cloud's controller or MetalLB plays). So the Deployment controller sees available replicas, the
endpoints controller ready addresses, and the Pulumi provider's await logic runs as on a real cluster. No
container runs: an image is never pulled and a probe never called. `stop(state_dir)` stops exactly the
recorded pids (each checked to still be the binary it started, so a reused pid is never signalled).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

from engine.build import bin_dir, missing_binaries, tool_path
from engine.kubeapi import KubeAPI, KubeAPIError
from rollout.local import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".engine" / "cluster"
STATE_FILE = "cluster.json"
KUBECONFIG = "kubeconfig"
# The shared folder sits beside the checkout (CI, /work/main) or beside the worktrees' parent.
CRD_DIR_CANDIDATES = (REPO_ROOT.parent / "shared" / "schemas" / "crds", REPO_ROOT.parents[1] / "shared" / "schemas" / "crds")
# The Gateway API CRDs the gateway router is tested against, copied from the Go module sigs.k8s.io/gateway-api
# (scripts/gateway_api_crds.sh). The experimental channel: a superset of the standard one that also carries
# HTTPRoute `sessionPersistence` (traffic.sticky); tests/infra/test_gateway.py checks renders against both.
GATEWAY_API_VERSION = "v1.6.3"
GATEWAY_API_CRD_DIR = REPO_ROOT / "tests" / "fixtures" / "gateway-api" / GATEWAY_API_VERSION / "experimental"
# How long the node controller waits for a node heartbeat before marking it NotReady (default 50 s; see below).
NODE_MONITOR_GRACE = "10m"
SERVICE_CIDR = "10.96.0.0/16"  # allocation range for ClusterIPs only: nothing routes to it
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMISSION_PLUGINS = "NamespaceLifecycle,ServiceAccount,PodSecurity,DefaultStorageClass,ResourceQuota,LimitRanger"
READY_TIMEOUT_S = 180.0
START_ATTEMPTS = 3
PORT_CLASH = "address already in use"
SELDON_CRD = "seldondeployments.machinelearning.seldon.io"
GRAPH_LEVELS = 10  # as Seldon's own build of the CRD
STOP_TIMEOUT_S = 20.0
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
POD_CIDR = "10.244.0.0/16"  # kwok hands pod IPs out of it; nothing routes to them either
# kwok's answer to a LoadBalancer Service: the ingress address a cloud's load-balancer controller (or MetalLB)
# would write, here the Service's own cluster IP. Without one the provider waits for an address forever.
LOAD_BALANCER_STAGE = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "service-load-balancer"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Service"},
        "selector": {"matchExpressions": [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".spec.type", "operator": "In", "values": ["LoadBalancer"]},
            {"key": ".status.loadBalancer.ingress", "operator": "DoesNotExist"},
        ]},
        "next": {"statusTemplate": "loadBalancer:\n  ingress:\n  - ip: {{ .spec.clusterIP | Quote }}\n"},
    },
}


@dataclass(frozen=True)
class NodePool:
    """Fake nodes of one kind: how many, their labels and taints, and what each can hold."""

    name: str
    count: int
    labels: dict[str, str]
    taints: tuple[dict[str, str], ...] = ()
    capacity: dict[str, str] = field(default_factory=lambda: {"cpu": "16", "memory": "64Gi", "pods": "110"})

    def nodes(self) -> list[dict]:
        return [fake_node(f"{self.name}-{index}", self) for index in range(self.count)]


def fake_node(name: str, pool: NodePool) -> dict:
    """A Node kwok manages (its annotation): the API server keeps the status given at creation, so the
    scheduler sees the capacity at once; kwok then keeps the node Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", "mlserve.local/pool": pool.name, **pool.labels},
        },
        "spec": {"taints": [dict(taint) for taint in pool.taints]},
        "status": {"capacity": dict(pool.capacity), "allocatable": dict(pool.capacity),
                   "nodeInfo": {"kubeletVersion": "fake", "operatingSystem": "linux", "architecture": "amd64"}},
    }


def gpu_pool(resource: str, labels: dict[str, str], taints: tuple[dict[str, str], ...], count: int = 2,
             gpus_per_node: int = 8) -> NodePool:
    """GPU nodes as a stack's `gpu.*` config expects them: the resource, the selector's labels, the taints its
    tolerations tolerate."""
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", resource: str(gpus_per_node)}
    return NodePool("gpu", count, labels, taints, capacity)


CPU_POOL = NodePool("cpu", 3, {})


class ClusterError(RuntimeError):
    """The local cluster could not be started or stopped; the message says why and where the logs are."""


@dataclass
class ClusterState:
    """What `start` recorded: enough for tests, `make cluster-down` and a person with the kubeconfig."""

    state_dir: str
    server: str
    kubeconfig: str
    bin_dir: str
    pids: dict[str, int]
    # Binaries that live outside `bin_dir` (kwok), by name: `stop` checks a pid against its own binary.
    binaries: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> KubeAPI:
        pki = Path(self.state_dir) / "pki"
        return KubeAPI(self.server, ca=pki / "ca.crt", cert=pki / "admin.crt", key=pki / "admin.key")


def crd_dir() -> Path:
    override = os.environ.get("MLSERVE_CRD_DIR")
    for candidate in ([Path(override)] if override else CRD_DIR_CANDIDATES):
        if candidate.is_dir():
            return candidate
    raise ClusterError(f"no CRD folder: looked in {', '.join(map(str, CRD_DIR_CANDIDATES))} (or set MLSERVE_CRD_DIR)")


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _certificate(pki: Path, name: str, subject: str, extensions: str) -> None:
    """An EC P-256 key and a certificate for `subject` signed by the CA in `pki`."""
    # Key identifiers: Python's ssl verifies with X509_STRICT, which requires them.
    (pki / f"{name}.ext").write_text(extensions + "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, client certificates and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=mlserve-local-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=pki)
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
    san = ",".join(["IP:127.0.0.1", "IP:10.96.0.1", *(f"DNS:{name}" for name in names)])
    _certificate(pki, "apiserver", "/CN=kube-apiserver",
                 f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    client = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    _certificate(pki, "admin", "/O=system:masters/CN=mlserve-admin", client)
    _certificate(pki, "controller-manager", "/CN=system:kube-controller-manager", client)
    _certificate(pki, "scheduler", "/CN=system:kube-scheduler", client)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, pki: Path, user: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlserve-local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki / f"{user}.crt"), "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "mlserve-local", "context": {"cluster": "mlserve-local", "user": user}}],
        "current-context": "mlserve-local",
    }


def _spawn(name: str, argv: list[str], state_dir: Path) -> int:
    log = open(state_dir / "logs" / f"{name}.log", "ab")
    # Own session: the cluster outlives `python -m engine up`, and a Ctrl-C in that terminal does not reach it.
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return process.pid


def _log_tail(logs: Path, name: str, lines: int = 5) -> str:
    path = logs / f"{name}.log"
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.exists() else ""


def _exited_early(pids: dict[str, int]) -> str | None:
    """The name of a process of `pids` that has already ended (and been reaped), else None."""
    for name, pid in pids.items():
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return name
        except ChildProcessError:
            return name
    return None


def _wait(what: str, check, timeout: float, logs: Path, pids: dict[str, int] | None = None) -> None:
    """Poll `check` until it holds; fail at once, with the end of its log, if a process of `pids` has ended."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if pids and (name := _exited_early(pids)):
            raise ClusterError(f"{name} exited while waiting for {what}: {_log_tail(logs, name)}; logs in {logs}")
        try:
            if check():
                return
        except KubeAPIError as err:
            last = str(err)
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what} ({last or 'not yet'}); logs in {logs}")


def expand_seldon_graph(crd: dict, levels: int = GRAPH_LEVELS) -> dict:
    """The SeldonDeployment CRD made structural as Seldon installs it: controller-gen leaves the recursive
    `graph.children` as `items: {}`, which the API server refuses; Seldon's build nests the graph schema in its
    own `children` `levels` deep, the deepest without `children` (operator/hack/create_graph_openapi_schema.py
    and the v1.18.2 chart's CRD in SeldonIO/seldon-core)."""
    crd = copy.deepcopy(crd)
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        graph = spec["properties"]["predictors"]["items"]["properties"]["graph"]
        if graph["properties"].get("children", {}).get("items") != {}:
            continue
        level = graph
        for _ in range(levels):
            child = copy.deepcopy(graph)
            level["properties"]["children"]["items"] = child
            level = child
        del level["properties"]["children"]
    return crd


def install_crds(api: KubeAPI, directory: Path, logs: Path) -> list[str]:
    """Create every CustomResourceDefinition in `directory` and wait until each is established."""
    names = []
    for path in sorted(directory.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                if document["metadata"]["name"] == SELDON_CRD:
                    document = expand_seldon_graph(document)
                api.apply(document)
                names.append(document["metadata"]["name"])
    for name in names:
        _wait(f"CRD {name} to be established", lambda name=name: _established(api, name), READY_TIMEOUT_S, logs)
    return names


def _established(api: KubeAPI, name: str) -> bool:
    crd = api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    return any(c["type"] == "Established" and c["status"] == "True" for c in (crd.get("status") or {}).get("conditions") or [])


def _node_ready(api: KubeAPI, name: str) -> bool:
    node = api.get("v1", "Node", name)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions") or [])


def start(state_dir: Path = DEFAULT_STATE_DIR, pools: tuple[NodePool, ...] = (CPU_POOL,)) -> ClusterState:
    """Start a fresh cluster whose files live in `state_dir` (replaced) with the fake nodes of `pools`;
    returns what it recorded. etcd and the API server listen on ports found free a moment before, which
    another process may take first: on that clash the whole start is tried again, up to START_ATTEMPTS times."""
    for _ in range(START_ATTEMPTS - 1):
        try:
            return _start_once(state_dir, pools)
        except ClusterError as err:
            if PORT_CLASH not in str(err):
                raise
    return _start_once(state_dir, pools)


def _start_once(state_dir: Path, pools: tuple[NodePool, ...]) -> ClusterState:
    binaries = bin_dir()
    if missing := missing_binaries(binaries):
        raise ClusterError(f"engine binaries missing in {binaries}: {', '.join(missing)}; run `make engine`")
    if (state_dir / STATE_FILE).exists():
        stop(state_dir)
    for sub in ("pki", "etcd", "logs"):
        shutil.rmtree(state_dir / sub, ignore_errors=True)
    logs = state_dir / "logs"
    logs.mkdir(parents=True)
    pki = state_dir / "pki"
    make_pki(pki)
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    (state_dir / "controller-manager.kubeconfig").write_text(yaml.safe_dump(kubeconfig(server, pki, "controller-manager")))
    (state_dir / KUBECONFIG).write_text(yaml.safe_dump(kubeconfig(server, pki, "admin")))
    pids: dict[str, int] = {}
    state = ClusterState(state_dir=str(state_dir), server=server, kubeconfig=str(state_dir / KUBECONFIG),
                         bin_dir=str(binaries), pids=pids)

    def record() -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")

    try:
        pids["etcd"] = _spawn("etcd", [
            str(binaries / "etcd"), "--name", "mlserve", "--data-dir", str(state_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}", "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"mlserve=http://127.0.0.1:{etcd_peer}",
            # A throwaway store: skipping fsync keeps it fast on a busy disk.
            "--unsafe-no-fsync", "--log-level", "warn",
        ], state_dir)
        record()
        pids["kube-apiserver"] = _spawn("kube-apiserver", [
            str(binaries / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=RBAC", "--anonymous-auth=false",
            # As kubeadm sets it: privilege is then Pod Security's decision, as on the clusters we deploy to.
            f"--enable-admission-plugins={ADMISSION_PLUGINS}", "--allow-privileged=true",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false", "--v=1",
        ], state_dir)
        record()
        api = state.api
        _wait("the API server to be ready", lambda: api.ready(), READY_TIMEOUT_S, logs, pids)
        pids["kube-controller-manager"] = _spawn("kube-controller-manager", [
            str(binaries / "kube-controller-manager"), f"--kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
            # No health and metrics port (nothing reads it): one port fewer that another process could take first.
            "--secure-port=0", "--leader-elect=false",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            # kwok posts its fake nodes' heartbeats. In one CI run the first came 56 s after the nodes registered,
            # past the default 50 s grace, so the node controller marked every node NotReady and every pod unready
            # ("all Nodes are not-Ready. Entering master disruption mode") and a Deployment's rollout timed out.
            # No test relies on a node going NotReady, so the grace is long.
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
            "--profiling=false", "--v=1",
        ], state_dir)
        record()
        _wait("the controller manager to create the default ServiceAccount",
              lambda: api.exists("v1", "ServiceAccount", "default", namespace="default"), READY_TIMEOUT_S, logs, pids)
        install_crds(api, crd_dir(), logs)
        install_crds(api, GATEWAY_API_CRD_DIR, logs)
        (state_dir / "scheduler.kubeconfig").write_text(yaml.safe_dump(kubeconfig(server, pki, "scheduler")))
        pids["kube-scheduler"] = _spawn("kube-scheduler", [
            str(binaries / "kube-scheduler"), f"--kubeconfig={state_dir / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
            "--secure-port=0", "--leader-elect=false", "--v=1",
        ], state_dir)
        record()
        kwok = tool_path("kwok")
        state.binaries["kwok"] = str(kwok)
        (state_dir / "kwok.yaml").write_text(yaml.safe_dump(LOAD_BALANCER_STAGE))
        pids["kwok"] = _spawn("kwok", [
            str(kwok), f"--kubeconfig={state_dir / KUBECONFIG}", f"--config={state_dir / 'kwok.yaml'}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake", f"--cidr={POD_CIDR}",
            # No --server-address: kwok's server (logs, exec, port-forward of fake pods) is not used, and kwok
            # exits when that port is taken, which once left every node NotReady for the whole wait in CI.
            "--node-ip=127.0.0.1",
        ], state_dir)
        record()
        for pool in pools:
            for node in pool.nodes():
                api.create(node)
        names = [node["metadata"]["name"] for pool in pools for node in pool.nodes()]
        _wait(f"kwok to report nodes {', '.join(names)} Ready", lambda: all(_node_ready(api, n) for n in names),
              READY_TIMEOUT_S, logs, pids)
    except BaseException:
        stop(state_dir)
        raise
    return state


def load_state(state_dir: Path = DEFAULT_STATE_DIR) -> ClusterState | None:
    path = state_dir / STATE_FILE
    return ClusterState(**json.loads(path.read_text())) if path.exists() else None


def _ours(pid: int, binary: Path) -> psutil.Process | None:
    """The process `pid` if it is still the `binary` we started, else None (gone, or the pid was reused)."""
    try:
        process = psutil.Process(pid)
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    return process if argv and Path(argv[0]) == binary else None


def _exited(process: psutil.Process, timeout: float) -> bool:
    """Wait for `process` to end; a zombie has ended (its parent, maybe another program, reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                if process.ppid() == os.getpid():
                    process.wait(0)  # our own child: reap it
                return True
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            return True
        time.sleep(0.2)
    return False


def stop(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop the processes recorded in `state_dir`, newest first; returns the names that were running."""
    state = load_state(state_dir)
    if state is None:
        return []
    stopped = []
    for name, pid in reversed(list(state.pids.items())):
        process = _ours(pid, Path(state.binaries.get(name) or Path(state.bin_dir) / name))
        if process is None:
            continue
        process.send_signal(signal.SIGTERM)
        if not _exited(process, STOP_TIMEOUT_S):
            process.kill()
            _exited(process, STOP_TIMEOUT_S)
        stopped.append(name)
    (state_dir / STATE_FILE).unlink()
    return stopped


def node_pools(stack: str = "prod") -> tuple[NodePool, ...]:
    """The CPU pool plus a GPU pool made for `stack`'s `gpu.*` config: nodes with its GPU resource, the labels
    of `gpu.nodeSelector` and a taint for each entry of `gpu.tolerations` (plus the resource's own
    NoSchedule taint, which the stack always tolerates), as a cloud's GPU node pool would be set up."""
    from infra.config import load_stack_config

    gpu = load_stack_config(stack).gpu
    taints = {(gpu.resource, None, "NoSchedule")}
    taints |= {(t.key, t.value, t.effect) for t in gpu.parsed_tolerations}
    return (CPU_POOL, gpu_pool(gpu.resource, gpu.node_selector_labels, tuple(
        {"key": key, "effect": effect, **({"value": value} if value else {})} for key, value, effect in sorted(taints, key=str)
    )))
