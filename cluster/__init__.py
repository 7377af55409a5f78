"""The data plane's cluster side: cloud adapters and each cloud's head (:mod:`cluster.clouds`),
the cluster file and the Ray autoscaler YAML (:mod:`cluster.cluster_config`), the head's shared
pieces and dispatch (:mod:`cluster.head`), the Ray ``NodeProvider``
(:mod:`cluster.node_provider`), worker cloud-init (:mod:`cluster.bootstrap`) and the fake
Scaleway API (:mod:`cluster.fake_scaleway`).

Every error of the package derives from :class:`cluster.errors.ClusterError`.
"""

from cluster.errors import ClusterError

__all__ = ["ClusterError"]
