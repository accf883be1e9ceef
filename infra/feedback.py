"""The feedback loop's share of the stack: the prediction-id signing key as a Secret, and a Service for /feedback.

Every model pod of every variant signs its predictions' `prediction_id`s with one key, read from the Secret
`APP-prediction-ids` (env `MLSERVE_PREDICTION_ID_KEY`, `infra.workload.feedback_env`), so feedback can reach any
pod and still verify.
The Service `APP-feedback` selects every model pod of the stack, champion and challenger alike, on the model
server's own port: on the Seldon path the executor only routes the inference protocol, so `/feedback` needs
a way in of its own. Seldon v1 copies a componentSpec's metadata labels onto the pods it creates
(SeldonIO/seldon-core, operator/controllers/seldondeployment_controller.go, createDeploymentWithoutEngine:
"add labels from podSpec metadata"), so the same selector reaches the pods on both paths.
Nothing here exists when `feedback.signingKey` is empty: predictions then carry no ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import FeedbackConfig, Identity, ServingConfig
from infra.workload import SIGNING_SECRET_DATA_KEY, Manifest, signing_secret_name, standard_labels


def feedback_service_name(identity: Identity) -> str:
    return f"{identity.app_name}-feedback"


def model_pod_selector(identity: Identity) -> dict[str, str]:
    """Labels every model pod of the stack carries, whatever its variant."""
    labels = standard_labels(identity)
    return {name: labels[name] for name in ("app.kubernetes.io/name", "app.kubernetes.io/component")}


def feedback_service_spec(identity: Identity, serving: ServingConfig) -> Manifest:
    """A ClusterIP Service over every model pod, on the model server's port (not Seldon's executor)."""
    return {
        "type": "ClusterIP",
        "selector": model_pod_selector(identity),
        "ports": [{"name": "http", "port": serving.port, "targetPort": serving.port, "protocol": "TCP"}],
    }


@dataclass(frozen=True)
class FeedbackArgs:
    identity: Identity
    feedback: FeedbackConfig
    serving: ServingConfig


class Feedback(pulumi.ComponentResource):
    """The signing key's Secret and the /feedback Service; nothing when feedback is off."""

    def __init__(self, name: str, args: FeedbackArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:feedback:Feedback", name, None, opts)
        identity = args.identity
        child = pulumi.ResourceOptions(parent=self)
        if args.feedback.enabled:
            k8s.core.v1.Secret(
                f"{name}-prediction-ids",
                metadata={"name": signing_secret_name(identity), "namespace": identity.namespace,
                          "labels": standard_labels(identity)},
                type="Opaque",
                # A secret Output: encrypted in the state, masked in previews.
                string_data={SIGNING_SECRET_DATA_KEY: pulumi.Output.secret(args.feedback.signing_key)},
                opts=child,
            )
            k8s.core.v1.Service(
                f"{name}-feedback",
                metadata={"name": feedback_service_name(identity), "namespace": identity.namespace,
                          "labels": standard_labels(identity)},
                spec=feedback_service_spec(identity, args.serving),
                opts=child,
            )
        self.register_outputs({})
