"""mlserve's model server and the demo model it serves.

- ``service.service``: the BentoML 1.4 service (``ChurnClassifier``); configured by ``MODEL_URI``,
  ``MODEL_VARIANT``, ``MLFLOW_TRACKING_URI``, ``MLSERVE_HOME``, ``MLSERVE_MAX_ROWS``, ``MLSERVE_MAX_BODY_BYTES``
  and ``MLSERVE_WORKERS``.
- ``service.train``: trains and registers ``customer-churn-classifier`` with ``champion``/``challenger``
  aliases (``ensure_demo_models``, ``register_demo_models``, ``sample_instances``).
- ``python -m service serve``: registers the demo models if needed, then runs ``bentoml serve``.

Nothing is imported here so that ``python -m service.train`` and the CLI stay cheap to start.
"""
