"""Metrics: ``/metrics`` in the Prometheus text format, and an instance's graphs for the console.

Both read what the service's metrics rounds measured (``service/metrics.py``): a scrape never
makes the host ask a QEMU or a guest anything. ``/metrics`` shows a caller what their token may
see: the instances and projects they have a role in; the host's capacity and the service's own
request figures to the administrator only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gureum.api import http_metrics
from gureum.api.auth import AnyUser, Viewer
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import MetricsHistoryOut
from gureum.model.tenancy import Principal
from gureum.service.core import Services
from gureum.service.metrics import HISTORY_S, Visibility

router = APIRouter(tags=["metrics"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


class _Scoped(Collector):
    """The last round's families as one caller may see them."""

    def __init__(self, svc: Services, seen: Visibility) -> None:
        self.svc, self.seen = svc, seen

    def collect(self) -> Iterator[Metric]:
        return self.svc.metrics.collect(self.seen)


def visibility(svc: Services, who: Principal) -> Visibility:
    return Visibility(svc.tenancy.project_ids(who), host=who.superuser)


@router.get(
    "/metrics",
    response_class=Response,
    openapi_extra={"x-gureum-role": "user"},
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(svc: Svc, who: AnyUser) -> Response:
    """Prometheus text format: every instance, project and (for the administrator) the host
    and the service's requests, as of the last metrics round."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scoped(svc, visibility(svc, who)))
    if who.superuser:
        for collector in http_metrics.collectors():
            registry.register(collector)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/instances/{ref}/metrics",
    response_model=MetricsHistoryOut,
    openapi_extra={"x-gureum-role": "viewer"},
)
async def instance_metrics(
    ref: str,
    svc: Svc,
    scope: Viewer,
    since: Annotated[float, Query(ge=0, description="only points after this Unix time")] = 0.0,
) -> dict[str, object]:
    """The instance's figures over the last hour, one point per metrics round: CPU % (of one
    host CPU), memory, the guest's own memory view, disk and network bytes per second."""
    inst = svc.instances.get(ref, scope.project_id)
    return {
        "instance": inst.id,
        "interval_s": svc.metrics.interval_s,
        "history_s": HISTORY_S,
        "points": svc.metrics.graph(inst.id, since),
    }
