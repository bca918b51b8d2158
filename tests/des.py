"""A request-level discrete-event simulation of one stage, to validate the fluid simulator.

Every request gets an exact arrival time: the per-second counts are Poisson draws at the trace's
rate, and within its second each request arrives uniformly at random (seeded), which together
make independent (Poisson) arrivals. With ``routing=None`` replicas pull from one FIFO queue
with dynamic batching: a free replica takes every waiting request up to its batch size (at least
one, waiting for the next arrival when the queue is empty) and serves the batch of k requests
in ``l(k, c)`` ms. With a routing, each request is sent on arrival to one ready replica and
joins that replica's own FIFO queue, which only it serves, batching the same way:
``round-robin`` picks a ready replica uniformly at random (seeded; what kube-proxy's iptables
rules do), ``least-outstanding`` the one with the fewest outstanding requests (queued or in its
running batch) relative to its throughput at its current shape, ties broken at random. A
request's latency is its batch's completion time minus its arrival time.

Replicas may change over time, as the cluster does: a replica serves nothing before it is
ready (a cold start), and an in-place resize changes its cores and batch size from a given
second on; a batch already running finishes at the shape it started with (a batch is the unit
of work an inference server hands to the model). Nothing here is shared with the fluid
simulator except the latency profile; the replica timelines are written by hand in the tests
from the Kubernetes behaviour being simulated.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.profiles import LatencyProfile


@dataclass(frozen=True)
class ReplicaTimeline:
    """One replica's life: when it serves and at which shape.

    Attributes:
        cores: CPU cores at the start.
        batch: batch size at the start.
        ready_s: second from which it serves (0: warm from the start).
        resizes: (second, cores, batch) in time order: the shape from that second on.
    """

    cores: int
    batch: int
    ready_s: float = 0.0
    resizes: tuple[tuple[float, int, int], ...] = field(default=())

    def shape_at(self, t_s: float) -> tuple[int, int]:
        """(cores, batch) of a batch that starts at ``t_s`` seconds."""
        cores, batch = self.cores, self.batch
        for at, new_cores, new_batch in self.resizes:
            if at > t_s:
                break
            cores, batch = new_cores, new_batch
        return cores, batch


def arrival_times_s(counts: np.ndarray, seed: int, *, even: bool = False) -> np.ndarray:
    """Sorted arrival times (s): ``counts[i]`` requests uniform at random in second i.

    With ``even`` the requests of a second are evenly spaced instead (the j-th of k at
    i + (j + 1/2)/k), as the fluid simulator assumes; only for diagnosing that assumption.
    """
    counts = np.asarray(counts, dtype=np.int64)
    seconds = np.repeat(np.arange(len(counts), dtype=np.float64), counts)
    if even:
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        rank = np.arange(seconds.size) - starts
        return seconds + (rank + 0.5) / np.repeat(counts, counts)
    rng = np.random.default_rng(seed)
    return np.sort(seconds + rng.random(seconds.size))


def timeline_latencies_ms(
    counts: np.ndarray,
    profile: LatencyProfile,
    replicas: Sequence[ReplicaTimeline],
    *,
    seed: int = 0,
    even: bool = False,
    routing: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Arrival time (s) and latency (ms) of every request, in arrival order.

    ``even`` spaces each second's arrivals evenly (see ``arrival_times_s``). Requests still
    waiting at the end of the span are served all the same (the queue is drained after it),
    so every latency is finite. ``routing``: None (one shared queue), ``round-robin`` or
    ``least-outstanding`` (a queue per replica; see the module's docstring).
    """
    if not replicas:
        raise ValueError("at least one replica is needed")
    arrivals = arrival_times_s(counts, seed, even=even)
    if routing is not None:
        return arrivals, _routed_latencies_ms(arrivals, profile, replicas, routing, seed)
    service_s: dict[tuple[int, int], float] = {}
    done = np.empty(arrivals.size)
    # Heap of (time the replica is next free, replica index): the first free replica serves.
    free = [(float(r.ready_s), i) for i, r in enumerate(replicas)]
    heapq.heapify(free)
    head = 0
    n = arrivals.size
    while head < n:
        at, i = heapq.heappop(free)
        start = max(at, arrivals[head])
        cores, batch = replicas[i].shape_at(start)
        # Everyone who has arrived by the start joins the batch, up to its size.
        last = min(head + batch, int(np.searchsorted(arrivals, start, side="right")))
        last = max(last, head + 1)
        k = last - head
        key = (k, cores)
        if key not in service_s:
            service_s[key] = float(profile.latency_ms(k, cores)) / 1000.0
        finish = start + service_s[key]
        done[head:last] = finish
        head = last
        heapq.heappush(free, (finish, i))
    return arrivals, (done - arrivals) * 1000.0


ROUTINGS = ("round-robin", "least-outstanding")


def _routed_latencies_ms(
    arrivals: np.ndarray,
    profile: LatencyProfile,
    replicas: Sequence[ReplicaTimeline],
    routing: str,
    seed: int,
) -> np.ndarray:
    """Latency (ms) of every request, each routed on arrival to one replica's own queue."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing {routing!r}: choose from {', '.join(ROUTINGS)}")
    rng = np.random.default_rng(seed + 1_000_003)
    n_rep = len(replicas)
    queues: list[deque[int]] = [deque() for _ in range(n_rep)]
    running = [0] * n_rep  # requests in the replica's running batch
    done = np.empty(arrivals.size)
    events: list[tuple[float, int]] = []  # (time a replica becomes free, replica)
    service_s: dict[tuple[int, int], float] = {}
    speed: dict[tuple[int, int], float] = {}

    def start(i: int, at: float) -> None:
        """Replica i, free at ``at``, takes what waits in its queue (up to its batch)."""
        cores, batch = replicas[i].shape_at(at)
        k = min(batch, len(queues[i]))
        key = (k, cores)
        if key not in service_s:
            service_s[key] = float(profile.latency_ms(k, cores)) / 1000.0
        finish = at + service_s[key]
        for _ in range(k):
            done[queues[i].popleft()] = finish
        running[i] = k
        heapq.heappush(events, (finish, i))

    def settle(until: float) -> None:
        """Every batch that ends by ``until`` ends; its replica starts the next one."""
        while events and events[0][0] <= until:
            at, i = heapq.heappop(events)
            running[i] = 0
            if queues[i]:
                start(i, at)

    for j, a in enumerate(arrivals):
        settle(a)
        ready = [i for i in range(n_rep) if replicas[i].ready_s <= a]
        if not ready:  # nobody serves yet: the first to be ready takes it
            ready = [min(range(n_rep), key=lambda i: replicas[i].ready_s)]
        if routing == "round-robin" or len(ready) == 1:
            i = ready[int(rng.integers(len(ready)))] if len(ready) > 1 else ready[0]
        else:
            best = math.inf
            ties: list[int] = []
            for r in ready:
                cores, batch = replicas[r].shape_at(a)
                h = speed.get((cores, batch))
                if h is None:
                    h = speed[(cores, batch)] = float(profile.throughput_rps(batch, cores))
                score = (len(queues[r]) + max(running[r], 0) + 1) / h
                if score < best - 1e-12:
                    best, ties = score, [r]
                elif score <= best + 1e-12:
                    ties.append(r)
            i = ties[int(rng.integers(len(ties)))] if len(ties) > 1 else ties[0]
        queues[i].append(j)
        if running[i] == 0:  # idle: it starts at once, or when it turns ready
            if replicas[i].ready_s <= a:
                start(i, a)
            else:
                running[i] = -1
                heapq.heappush(events, (float(replicas[i].ready_s), i))
    settle(math.inf)
    return (done - arrivals) * 1000.0
