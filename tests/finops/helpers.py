"""Builders for FinOps tests: a tiny catalog, deployments, instances, intervals, usage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from core.models import (
    ApiKey,
    BillingInterval,
    Deployment,
    Instance,
    InstanceState,
    InstanceType,
    InstanceTypePrice,
    Org,
    Provider,
    UsageRecord,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


class Seed:
    """Writes rows directly (the finops module only reads them)."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        return self._n

    def provider(self, code: str = "prov", granularity: int = 60, minimum: int = 60) -> str:
        self.s.add(Provider(code=code, name=code, billing_granularity_seconds=granularity,
                            billing_minimum_seconds=minimum))
        self.s.flush()
        return code

    def itype(self, provider: str, name: str, prices: list[tuple[datetime, str]]) -> uuid.UUID:
        it = InstanceType(provider_code=provider, name=name)
        self.s.add(it)
        self.s.flush()
        for eff, eur in prices:
            self.s.add(InstanceTypePrice(instance_type_id=it.id, effective_from=eff,
                                         hourly_eur=Decimal(eur)))
        self.s.flush()
        return it.id

    def deployment(self, name: str, spec: dict[str, Any] | None = None) -> uuid.UUID:
        d = Deployment(name=name, spec=spec or {})
        self.s.add(d)
        self.s.flush()
        return d.id

    def instance(self, provider: str, itype: str, zone: str | None = "z1",
                 deployment_id: uuid.UUID | None = None) -> uuid.UUID:
        inst = Instance(launch_id=f"launch-{self._next()}-{uuid.uuid4().hex[:6]}",
                        cluster_name="c", provider_code=provider, zone_code=zone,
                        instance_type_name=itype, deployment_id=deployment_id,
                        state=InstanceState.READY)
        self.s.add(inst)
        self.s.flush()
        return inst.id

    def interval(self, instance_id: uuid.UUID, start: datetime, end: datetime | None) -> None:
        inst = self.s.get(Instance, instance_id)
        assert inst is not None
        self.s.add(BillingInterval(instance_id=inst.id, provider_code=inst.provider_code,
                                   zone_code=inst.zone_code,
                                   instance_type_name=inst.instance_type_name,
                                   deployment_id=inst.deployment_id, started_at=start,
                                   ended_at=end))
        self.s.flush()

    def org(self, name: str | None = None) -> uuid.UUID:
        o = Org(name=name or f"org{self._next()}-{uuid.uuid4().hex[:6]}")
        self.s.add(o)
        self.s.flush()
        return o.id

    def api_key(self, org_id: uuid.UUID) -> uuid.UUID:
        n = self._next()
        k = ApiKey(org_id=org_id, name=f"k{n}", prefix="ia-x", key_hash=uuid.uuid4().hex * 2)
        self.s.add(k)
        self.s.flush()
        return k.id

    def usage(self, at: datetime, tokens: tuple[int, int], *, deployment: str | None,
              model: str = "m", api_key_id: uuid.UUID | None = None,
              org_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None,
              status: str = "ok") -> None:
        self.s.add(UsageRecord(request_id=f"r{self._next()}-{uuid.uuid4().hex}",
                               api_key_id=api_key_id, org_id=org_id, user_id=user_id,
                               model=model, deployment=deployment, prompt_tokens=tokens[0],
                               completion_tokens=tokens[1], status=status, at=at))
        self.s.flush()
