"""PromQL label matchers for this stack's model pods, shared by the dashboard, the alert and drift rules."""

from __future__ import annotations

from infra.config import Identity
from service.names import CLIENT_ERROR_TYPES


def model_selector(identity: Identity) -> str:
    """PromQL label matchers (no braces) for this stack's model pods: their namespace and scrape job.

    The PodMonitor names the job after the pods' `app.kubernetes.io/name` label, so this matches the
    plain Deployments and Seldon's predictor pods alike.
    """
    return f'namespace="{identity.namespace}",job="{identity.app_name}"'


def model_errors_selector(identity: Identity) -> str:
    """`model_selector` narrowed to errors that are the model's fault (client 4xx left out)."""
    return f'{model_selector(identity)},error_type!~"{"|".join(CLIENT_ERROR_TYPES)}"'
