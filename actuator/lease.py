"""One Lease per service (coordination.k8s.io/v1), so two runs never both act on it.

The pipeline's runs (an Airflow task retried, a cleared run, ``surgecast run`` and ``surgecast
apply`` side by side, two schedulers) take the service's Lease before any active write and
release it afterwards. The protocol is client-go's leader election
(k8s.io/client-go/tools/leaderelection/resourcelock/leaselock.go and leaderelection.go):

* read the Lease; if it does not exist, create it (a concurrent creator gets 409 AlreadyExists);
* if another holder's ``renewTime + leaseDurationSeconds`` is still in the future, it is held;
* otherwise write ourselves in as holder with a patch carrying the ``resourceVersion`` just
  read, so of two runs racing for an expired Lease exactly one wins (the other gets 409
  Conflict). A new Lease is created with the holder and duration only, then given its times by
  the same conditional patch (the client cannot send a ``MicroTime`` in a create, see
  :meth:`actuator.kube.KubeApi.patch_lease`); until then its ``creationTimestamp`` stands for
  the renew time;
* release: clear the holder and set ``leaseDurationSeconds`` to 1 so the next run may take it
  at once (client-go's ``ReleaseOnCancel`` does the same).

A Lease that cannot be read or written for any other reason means "do not act": safety first.
Times are the wall clock (epoch seconds, injected), never the run's logical time.
"""

from __future__ import annotations

import pandas as pd
import urllib3
from kubernetes.client.exceptions import ApiException

from actuator.kube import KubeApi, describe_error

LEASE_PREFIX = "surgecast-"


def lease_name(service: str) -> str:
    """The Lease of ``service``: ``surgecast-<service>`` (a DNS-1123 subdomain)."""
    return f"{LEASE_PREFIX}{service}"


def micro_time(epoch_s: float) -> str:
    """A ``MicroTime`` (RFC 3339 with microseconds, UTC), as the Lease API writes it."""
    return pd.Timestamp(epoch_s, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return pd.Timestamp(text).timestamp()
    except (ValueError, TypeError):
        return None


class Lease:
    """The Lease of one service for one holder.

    Args:
        api: the Kubernetes API.
        namespace, name: where the Lease lives.
        identity: this holder's name (``holderIdentity``).
        duration_s: ``leaseDurationSeconds`` while held (whole seconds, at least 1).
    """

    def __init__(
        self, api: KubeApi, namespace: str, name: str, identity: str, *, duration_s: float
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.duration_s = max(1, round(duration_s))
        self.held = False

    @property
    def where(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    def _write(
        self,
        rv: str | None,
        now_s: float,
        *,
        acquired_s: float,
        transitions: int,
        duration_s: int,
        release: bool = False,
    ) -> dict:
        spec = {
            # A merge patch's null removes the holder: released, as client-go leaves it.
            "holderIdentity": None if release else self.identity,
            "leaseDurationSeconds": duration_s,
            "acquireTime": micro_time(acquired_s),
            "renewTime": micro_time(now_s),
            "leaseTransitions": transitions,
        }
        return self.api.patch_lease(
            self.namespace, self.name, {"metadata": {"resourceVersion": rv}, "spec": spec}
        )

    def _create(self) -> dict:
        return self.api.create_lease(
            self.namespace,
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.duration_s,
                    "leaseTransitions": 0,
                },
            },
        )

    def acquire(self, *, now_s: float) -> str | None:
        """Take the Lease at ``now_s`` (wall clock, epoch seconds).

        Returns:
            None when this holder now has it, else why not (one line).
        """
        try:
            current = self.api.lease(self.namespace, self.name)
        except ApiException as exc:
            if exc.status != 404:
                return f"{self.where} unreadable ({describe_error(exc)}): not acting"
            current = None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return f"{self.where} unreadable ({describe_error(exc)}): not acting"
        try:
            if current is None:
                current = self._create()
            spec = current.get("spec") or {}
            meta = current.get("metadata") or {}
            holder = spec.get("holderIdentity")
            renewed = (
                _epoch(spec.get("renewTime"))
                or _epoch(spec.get("acquireTime"))
                or _epoch(meta.get("creationTimestamp"))
            )
            duration = float(spec.get("leaseDurationSeconds") or 0)
            if holder and holder != self.identity and renewed is not None:
                if renewed + duration > now_s:
                    until = micro_time(renewed + duration)
                    return f"{self.where} held by {holder} until {until}: another run acts"
            transitions = int(spec.get("leaseTransitions") or 0)
            ours = holder == self.identity
            self._write(
                meta.get("resourceVersion"),
                now_s,
                acquired_s=(_epoch(spec.get("acquireTime")) or now_s) if ours else now_s,
                # client-go counts a transition whenever the holder changes (from none too)
                transitions=transitions if ours else transitions + 1,
                duration_s=self.duration_s,
            )
        except ApiException as exc:
            if exc.status == 409:
                return f"{self.where} taken by another run at the same time: not acting"
            return f"{self.where} not taken ({describe_error(exc)}): not acting"
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return f"{self.where} not taken ({describe_error(exc)}): not acting"
        self.held = True
        return None

    def release(self, *, now_s: float) -> str | None:
        """Let the next run take the Lease at once; None, or why it could not (it then expires
        by itself after ``duration_s``)."""
        if not self.held:
            return None
        try:
            current = self.api.lease(self.namespace, self.name)
            spec = current.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                holder = spec.get("holderIdentity")
                return f"{self.where} no longer ours at release (held by {holder})"
            self._write(
                (current.get("metadata") or {}).get("resourceVersion"),
                now_s,
                acquired_s=_epoch(spec.get("acquireTime")) or now_s,
                transitions=int(spec.get("leaseTransitions") or 0),
                duration_s=1,
                release=True,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return f"{self.where} not released ({describe_error(exc)}): it expires by itself"
        self.held = False
        return None
