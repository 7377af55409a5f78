"""Ray Serve LLM's hook into a replica's start: :class:`WeightsCallback` (``LLMConfig.
callback_config``) runs :func:`serve_apps.weights.prepare_weights` before the engine's node
initialisation, then points the engine at the local directory and skips Ray's own download.

Why a callback and not an ``LLMServer`` subclass: ``on_before_node_init`` runs inside
``VLLMEngine.start`` in the replica, before vLLM reads ``hf_model_id``, and may set it; the
server class stays Ray's. A failure raises (the replica's constructor fails; Serve gives up after
``max_constructor_retry_count`` tries, and the control API, told ``failed``, takes the deployment
out of the Serve config).
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.ray_private import CallbackBase
from serve_apps.weights import WeightsError, WeightsPlan, prepare_weights


def _prepare_on_node(plan: dict[str, Any]) -> str | None:
    """A Ray task pinned to another node of the replica's placement group."""
    path = prepare_weights(WeightsPlan.model_validate(plan))
    return None if path is None else str(path)


class WeightsCallback(CallbackBase):
    """``callback_kwargs = {"plan": WeightsPlan as JSON}``."""

    async def on_before_node_init(self) -> None:
        plan = WeightsPlan.model_validate(self.kwargs["plan"])
        path = await asyncio.to_thread(prepare_weights, plan)
        if path is None:
            return
        others = await self._other_nodes(plan)
        elsewhere = sorted({str(p) for p in others} - {str(path)})
        if elsewhere:
            raise WeightsError("cache_mismatch", f"the nodes of one replica cache its weights "
                               f"at different paths ({path} vs {elsewhere}): set "
                               "INVENTIV_WEIGHTS_CACHE alike on every node")
        engine_config: Any = self.llm_config.get_engine_config()
        engine_config.hf_model_id = str(path)
        # Ray's initialize_node would download the model again (from the Hub id).
        self.ctx.run_init_node = False

    async def _other_nodes(self, plan: WeightsPlan) -> list[str | None]:
        """The same download on the placement group's other nodes (a replica spanning nodes,
        e.g. tensor parallelism over two GPU nodes), as Ray's own node initialisation does."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        pg = self.ctx.placement_group
        if pg is None:
            return []
        here = ray.get_runtime_context().get_node_id()
        nodes = set(ray.util.placement_group_table(pg)["bundles_to_node_id"].values()) - {here}
        task = ray.remote(_prepare_on_node)
        refs = [task.options(num_cpus=0, runtime_env=self.ctx.runtime_env,
                             scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                             ).remote(plan.model_dump(mode="json"))
                for node in sorted(nodes)]
        return list(await asyncio.gather(*refs)) if refs else []
