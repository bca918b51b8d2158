"""A request-level discrete-event simulation of one stage, to validate the fluid simulator.

Every request gets an exact arrival time (spread uniformly at random within its second, seeded).
Replicas pull from one FIFO queue with dynamic batching: a free replica takes every waiting
request up to its batch size (at least one, waiting for the next arrival when the queue is
empty) and serves the batch of k requests in ``l(k, c)`` ms. A request's latency is its batch's
completion time minus its arrival time. Nothing here is shared with the fluid simulator except
the latency profile.
"""

from __future__ import annotations

import heapq

import numpy as np

from planner.profiles import LatencyProfile


def request_latencies_ms(
    counts: np.ndarray,
    profile: LatencyProfile,
    *,
    replicas: int,
    cores: int,
    batch: int,
    seed: int = 0,
) -> np.ndarray:
    """Latency (ms) of every request, in arrival order, for a fixed cluster shape."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    seconds = np.repeat(np.arange(len(counts), dtype=np.float64), counts)
    arrivals = np.sort(seconds + rng.random(seconds.size))
    service_s = [0.0] + [float(profile.latency_ms(k, cores)) / 1000.0 for k in range(1, batch + 1)]
    done = np.empty(arrivals.size)
    free = [0.0] * replicas  # heap of the times replicas become free
    heapq.heapify(free)
    head = 0
    n = arrivals.size
    while head < n:
        at = heapq.heappop(free)
        start = max(at, arrivals[head])
        # Everyone who has arrived by the start joins the batch, up to its size.
        last = min(head + batch, int(np.searchsorted(arrivals, start, side="right")))
        last = max(last, head + 1)
        finish = start + service_s[last - head]
        done[head:last] = finish
        head = last
        heapq.heappush(free, finish)
    return (done - arrivals) * 1000.0
