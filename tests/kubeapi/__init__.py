"""A faithful subset of the Kubernetes API for the actuator's tests, served over HTTP on
loopback and driven only through the official client.

No kube-apiserver can run on the test machines, so this package plays one. The control plane
and the API handlers are the product's (:mod:`surgecast.offline.cluster`,
:mod:`surgecast.offline.apiserver`, which the backtest drives in process); this package is the
HTTP front, authentication, RBAC and fault injection. Together: Deployments with the
scale subresource, a ReplicaSet-like controller with a pod start delay, pods with the resize
subresource and its conditions, HPAs, Events, Leases, ConfigMaps, resourceVersion conflicts,
label selectors, bearer-token authentication and RBAC from ``deploy/``, validation and
ResourceQuota admission (dry runs included), and injectable 5xx errors, lost answers and
concurrent writers. Time is a :class:`Clock` the test advances; nothing waits in real time.
"""

from kubeapi.cluster import BASE_EPOCH_S, Clock, FakeCluster, Node
from kubeapi.server import FakeApiServer

__all__ = ["BASE_EPOCH_S", "Clock", "FakeApiServer", "FakeCluster", "Node"]
