"""The cluster model the fake API server serves: the product's
(:mod:`surgecast.offline.cluster`), under the names the tests use."""

from surgecast.offline.cluster import (  # noqa: F401
    BASE_EPOCH_S,
    Clock,
    Node,
    _fenceposts,
    iso_s,
    qos_class,
)
from surgecast.offline.cluster import ClusterModel as FakeCluster  # noqa: F401
