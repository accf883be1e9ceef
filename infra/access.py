"""How model pods reach the registry and the artifact store: credentials, plain environment, workload identity.

Credentials come from secret stack config (`pulumi config set --secret --path access.mlflowTrackingToken T`)
and go into one Kubernetes Secret, as Pulumi secrets, so they are encrypted in the state and shown as
`[secret]` in previews. Pods read them by reference (`valueFrom.secretKeyRef`), never by value, so no pod
template and no rendered file carries one. The pods run as their own ServiceAccount whose annotations
(`access.serviceAccountAnnotations`) bind it to a cloud identity: EKS IRSA (`eks.amazonaws.com/role-arn`) or
GKE Workload Identity (`iam.gke.io/gcp-service-account`), the way to reach S3 or GCS without keys at all.
The artifact-store client packages themselves are in the image (`image.artifactStoreClients`, infra/image_context.py);
the pod side (environment by reference, the ServiceAccount's name) is built in infra/workload.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AccessConfig, Identity
from infra.workload import credentials, secret_name, service_account_name, standard_labels

def service_account_annotations(access: AccessConfig) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in access.service_account_annotations)


@dataclass(frozen=True)
class ModelAccessArgs:
    identity: Identity
    access: AccessConfig


class ModelAccess(pulumi.ComponentResource):
    """The model pods' ServiceAccount, and the Secret holding their credentials when any are set."""

    def __init__(self, name: str, args: ModelAccessArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:access:ModelAccess", name, None, opts)
        identity = args.identity
        child = pulumi.ResourceOptions(parent=self)
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-serviceaccount",
            # No empty `annotations` map: the API server would not store it, and a read-back would differ.
            metadata={
                "name": service_account_name(identity),
                "namespace": identity.namespace,
                "labels": standard_labels(identity),
                **({"annotations": annotations} if (annotations := service_account_annotations(args.access)) else {}),
            },
            # The model server never calls the Kubernetes API; workload identity brings its own projected token.
            automount_service_account_token=False,
            opts=child,
        )
        secrets = credentials(args.access)
        if secrets:
            k8s.core.v1.Secret(
                f"{name}-secret",
                metadata={"name": secret_name(identity), "namespace": identity.namespace, "labels": standard_labels(identity)},
                type="Opaque",
                string_data={env: pulumi.Output.secret(value.text) for env, value in secrets.items()},
                opts=child,
            )
        self.register_outputs({"serviceAccount": service_account_name(identity)})
