"""A local Kubernetes control plane built from Go modules: etcd, kube-apiserver, kube-controller-manager.

`python -m engine build` compiles them from the wrapper module in `engine/kubernetes/` (versions pinned in its
go.mod) into a cache outside the checkout; `python -m engine up|down` starts and stops a cluster on loopback.
"""
