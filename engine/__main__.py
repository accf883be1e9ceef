"""`python -m engine build|up|down|status`: build the engine (control plane, kwok, Pulumi CLI and Kubernetes
provider), start or stop the local cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.build import EngineError, build
from engine.cluster import DEFAULT_STATE_DIR, ClusterError, load_state, node_pools, start, stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_STATE_DIR, help=f"cluster state folder (default {DEFAULT_STATE_DIR})")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build()
        elif args.command == "up":
            build()
            state = start(args.dir.resolve(), node_pools())
            version = state.api.server_version()["gitVersion"]
            print(f"cluster: Kubernetes {version} at {state.server}, pids {state.pids}")
            print(f"export KUBECONFIG={state.kubeconfig}")
        elif args.command == "down":
            stopped = stop(args.dir.resolve())
            print(f"cluster: stopped {', '.join(stopped)}" if stopped else "cluster: nothing running")
        else:
            state = load_state(args.dir.resolve())
            print(f"cluster: {state.server}, pids {state.pids}, KUBECONFIG={state.kubeconfig}" if state else "cluster: not started")
    except (EngineError, ClusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
