"""The real engine, built from Go modules: the Pulumi CLI and Kubernetes provider, and a local cluster whose pods
become Ready (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok).

`python -m engine build` compiles them from the wrapper modules in `engine/*/` (versions pinned in each go.mod)
into a cache outside the checkout; `python -m engine up|down` starts and stops a cluster on loopback.
"""
