"""mlserve's model server and the demo model it serves.

- ``service.service``: the BentoML 1.4 service (``ModelServer``) serving the registered MLflow model named by
  ``MODEL_URI``; ``service.settings`` lists the environment it reads.
- ``service.predictor``: the protocol-independent core every protocol calls (``ServedModel.check_rows``,
  ``check_tensors`` and ``score``, or ``predict_rows`` in one step); ``service.batching`` merges concurrent requests
  into one model call on the worker's model thread; ``service.schema`` validates requests against the model's signature; ``service.loading``
  resolves and loads the model; ``service.protocols`` reads the MLflow scoring and OIP wire formats;
  ``service.metrics`` the model_* metrics; ``service.patches`` two BentoML fixes.
- ``service.train``: trains and registers the demo ``customer-churn-classifier`` with ``champion``/``challenger``
  aliases (``ensure_demo_models``, ``register_demo_models``, ``sample_instances``).
- ``python -m service serve``: serves a model with ``bentoml serve`` (registering the demo first only when the demo
  is what was asked for).

Nothing is imported here so that ``python -m service.train`` and the CLI stay cheap to start.
"""
