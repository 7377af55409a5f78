"""Which model ids the ingress serves: each deployment's model, and its LoRA adapters as
``<model>:<adapter>`` (or the bare adapter name when only one deployment has an adapter of that
name), and which of them a key may see (``visible``): the deployment's ``allowed_orgs``, the
adapter's own ``allowed_orgs``, and the key's model scope (``allowed_models`` lists model ids:
``tiny`` is the base model only, ``tiny:sql`` that adapter only).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core.spec import AdapterSpec, DeploymentSpec


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a deployment, and one of its adapters or none."""

    dep: DeploymentSpec
    adapter: AdapterSpec | None = None

    @property
    def model_id(self) -> str:
        """The canonical id (what goes upstream, in usage records and in ``/v1/models``)."""
        if self.adapter is None:
            return self.dep.model.name
        return f"{self.dep.model.name}:{self.adapter.name}"


def _org_allowed(allowed: list[str] | None, principal: Any) -> bool:
    if allowed is None:
        return True
    name = getattr(principal, "org_name", None)
    return str(principal.org_id) in allowed or (name is not None and name in allowed)


def visible(target: Target, principal: Any) -> bool:
    """Whether the key may see and use ``target``."""
    if not _org_allowed(target.dep.allowed_orgs, principal):
        return False
    if target.adapter is not None and not _org_allowed(target.adapter.allowed_orgs, principal):
        return False
    return bool(principal.may_use(target.model_id))


class Catalog:
    """The model ids of an app's deployments (keyed by model name)."""

    def __init__(self, deployments: Mapping[str, DeploymentSpec]) -> None:
        self.deployments = deployments
        by_name: dict[str, list[Target]] = {}
        for dep in deployments.values():
            for adapter in dep.model.adapters:
                by_name.setdefault(adapter.name, []).append(Target(dep, adapter))
        # Bare adapter names that only one deployment has (and that are no model's name).
        self._bare = {name: targets[0] for name, targets in by_name.items()
                      if len(targets) == 1 and name not in deployments}

    def resolve(self, model: Any) -> Target | None:
        """The target ``model`` names, or None (unknown)."""
        if not isinstance(model, str):
            return None
        dep = self.deployments.get(model)
        if dep is not None:
            return Target(dep)
        base, sep, name = model.rpartition(":")
        if sep:
            dep = self.deployments.get(base)
            if dep is not None:
                for adapter in dep.model.adapters:
                    if adapter.name == name:
                        return Target(dep, adapter)
            return None
        return self._bare.get(model)

    def targets(self) -> Iterator[Target]:
        """Every servable id: each model, then its adapters."""
        for dep in self.deployments.values():
            yield Target(dep)
            for adapter in dep.model.adapters:
                yield Target(dep, adapter)
