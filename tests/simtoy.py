"""A toy service on the backtest's cluster model, shared by the engine and bridge tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from planner.profiles import LatencyProfile, Pipeline
from surgecast.offline.cluster import Clock, ClusterModel, Node
from surgecast.offline.engine import Engine, StageBinding
from surgecast.offline.port import SimPort

# l(b, c) = 40·b/c + 10 ms: one core at batch 1 serves 20 rps (as the simulator's tests).
TOY = Pipeline(
    name="toy",
    stages=(LatencyProfile("toy", 40.0, 0.0, 0.0, 10.0, max_cores=8, max_batch=8,
                           memory_mb=512.0),),
)
NS, DEP = "inference", "toy"
START = pd.Timestamp("2024-03-04T00:00:00Z")


def setup(counts, replicas=2, cores=1, cold_start_s=30.0, resize_s=2.0, controllers=(),
          routing="round-robin"):
    """(model, port, engine): one Deployment of ``replicas`` × ``cores`` serving ``counts``
    behind ``routing``."""
    clock = Clock(START.timestamp())
    model = ClusterModel(clock, start_delay_s=cold_start_s, resize_delay_s=resize_s,
                         nodes=[Node("node-1", 64_000)], follow_clock=False)
    model.add_deployment(NS, DEP, replicas=replicas, cores=cores, batch_env="BATCH", batch=1)
    engine = Engine(np.asarray(counts, dtype=float), TOY, model, NS,
                    [StageBinding(DEP, batch_env="BATCH")], slo_ms=500.0,
                    controllers=controllers, routing=routing)
    return model, SimPort(model), engine
