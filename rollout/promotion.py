"""Promotion: what makes the challenger the champion once a rollout has passed its last step.

Routers only move traffic (rollout.router); promotion is the job of whoever runs the scheduler, as in Flagger,
where the controller promotes and the router only sets routes. Each kind speaks one method, `promote()`, which
returns a one-line description of what changed:

- `StackPromotion`: `model.championUri := model.challengerUri`, `model.challengerUri` removed and
  `traffic.challengerWeight` 0, applied as one `pulumi up` (a real stack);
- `RegistryAliasPromotion`: the registry's `champion` alias moves to the challenger's version (the demo, whose
  servers are started by model version);
- `FullWeightPromotion`: the challenger keeps all of the traffic (a local HAProxy, which has no model URIs).

`make_promotion` picks one by the same type string as `rollout.router.make_router`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from rollout.errors import RouterError
from rollout.pulumi_stack import PulumiStack
from rollout.router import WEIGHT_KEY, TrafficRouter
from service.names import CHAMPION

CHAMPION_URI_KEY = "model.championUri"
CHALLENGER_URI_KEY = "model.challengerUri"


class Promotion(Protocol):
    """Makes the challenger the champion."""

    def promote(self) -> str:
        """Make the challenger the champion; returns a one-line description of what changed."""
        ...


class StackPromotion:
    """The stack's challenger URI becomes its champion URI, the challenger is removed, the weight goes to 0."""

    def __init__(self, stack_name: str, project_dir: Path, *, config_only: bool = False,
                 on_output: Callable[[str], None] | None = None):
        self.stack_name = stack_name
        self.stack = PulumiStack(stack_name, project_dir, config_only=config_only, on_output=on_output)

    def promote(self) -> str:
        """championUri := challengerUri, challengerUri removed, weight 0; applied as one update."""
        challenger_uri = self.stack.get(CHALLENGER_URI_KEY)
        if not challenger_uri:
            raise RouterError(f"stack {self.stack_name!r} has no {CHALLENGER_URI_KEY} to promote")
        self.stack.set(CHAMPION_URI_KEY, challenger_uri)
        self.stack.remove(CHALLENGER_URI_KEY)
        self.stack.set(WEIGHT_KEY, "0")
        self.stack.apply(f"rollout: promote {challenger_uri} to champion")
        return f"{CHAMPION_URI_KEY} is now {challenger_uri}; {CHALLENGER_URI_KEY} removed; {WEIGHT_KEY}=0"


class FullWeightPromotion:
    """Where no model URI can change (a local HAProxy), the challenger keeps all of the traffic."""

    def __init__(self, router: TrafficRouter):
        self.router = router

    def promote(self) -> str:
        """Set the challenger's weight to 100."""
        self.router.set_weight(100)
        return "challenger serves all traffic"


class RegistryAliasPromotion:
    """The registry's `champion` alias of `model_name` moves to the challenger's `version`; traffic stays on it."""

    def __init__(self, router: TrafficRouter, tracking_uri: str, model_name: str, version: str):
        self.router = router
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.version = version

    def promote(self) -> str:
        """Point `model_name@champion` at `version` and keep all traffic on the challenger."""
        import mlflow

        self.router.set_weight(100)
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        client.set_registered_model_alias(self.model_name, CHAMPION, self.version)
        return (f"registry alias {self.model_name}@{CHAMPION} now points to version {self.version}; "
                "challenger serves all traffic")


def make_promotion(kind: str, *, router: TrafficRouter, **options) -> Promotion:
    """The promotion for router type `kind` ("stack": `StackPromotion(**options)`; "haproxy": full weight)."""
    if kind == "stack":
        return StackPromotion(**options)
    if kind == "haproxy":
        return FullWeightPromotion(router)
    raise RouterError(f"unknown router type {kind!r}; expected stack or haproxy")
