"""Names of the stack outputs, shared by `__main__.py`, `rollout/` and the tests."""

ENDPOINT = "endpoint"
IMAGE = "image"
NAMESPACE = "namespace"
CHALLENGER_WEIGHT = "challengerWeight"
VARIANTS = "variants"
