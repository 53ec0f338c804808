"""Model actors on the Dask cluster: one per (backend, variant, device), placed on the least-loaded worker,
on a GPU worker when there is one (a model whose backend ``requires_gpu``: only there); and the subscription to
the workers' progress events.

Both are tied to one scheduler: when it changes (restarted), actors are started afresh and the topic is
subscribed again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from inference.actors import PROGRESS_TOPIC, ModelActor, ModelSpec
from inference.backends import requires_gpu
from inference.devices import choose_device
from inference.weights import helical_cache_dir
from store.tables import ModelEntry

log = logging.getLogger(__name__)


class ActorPool:
    def __init__(self, platform, on_progress: Callable[[dict], None]) -> None:  # noqa: ANN001 - Platform
        self.platform = platform
        self._on_progress = on_progress
        self._actors: dict[str, object] = {}
        self._lock = threading.Lock()
        self._scheduler_id: str | None = None
        self._subscribed_client = None

    def device_and_resources(self, model: ModelEntry | None = None) -> tuple[str, dict | None]:
        """The device (``choose_device`` with the cluster's GPU workers) and the Dask resources to ask for: a
        ``GPU`` resource for CUDA, so the scheduler places the actor on a GPU worker only. A GPU-only model on a
        cluster without one raises ``GpuRequired`` (a run submitted while the cluster was starting ends here)."""
        gpu_only = model is not None and requires_gpu(model.backend)
        device = choose_device(self.platform.settings.device, int(self.platform.compute().describe()["gpus"]),
                               gpu_only, model.name if model is not None else "This model")
        return device, ({"GPU": 1} if device.startswith("cuda") else None)

    def spec(self, model: ModelEntry, variant: str | None, device: str) -> ModelSpec:
        s = self.platform.settings
        return ModelSpec(model.backend, variant if model.variant else None, device, str(s.weights_dir),
                         str(s.generated_weights_dir), str(helical_cache_dir()), s.allow_download)

    def actor_for(self, model: ModelEntry, variant: str | None) -> tuple[str, object]:
        """The model's actor (created on first use, kept loaded) and its key."""
        device, resources = self.device_and_resources(model)
        spec = self.spec(model, variant, device)
        with self._lock:
            if spec.key not in self._actors:
                client = self.platform.compute().client
                workers = list(client.scheduler_info()["workers"])
                used = [getattr(a, "_address", None) for a in self._actors.values()]
                target = min(workers, key=lambda w: sum(u == w for u in used)) if workers else None
                future = client.submit(ModelActor, spec, actor=True, resources=resources, pure=False,
                                       workers=[target] if target and not resources else None,
                                       allow_other_workers=True)
                self._actors[spec.key] = future.result(timeout=120)
            return spec.key, self._actors[spec.key]

    def forget(self, key: str) -> None:
        with self._lock:
            self._actors.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._actors.clear()

    def subscribe(self) -> None:
        """Progress events of this scheduler; a restarted scheduler knows neither the topic nor the actors."""
        client = self.platform.compute().client
        scheduler_id = client.scheduler_info().get("id")
        with self._lock:
            if scheduler_id != self._scheduler_id:
                if self._scheduler_id is not None:
                    log.warning("the Dask scheduler changed (%s -> %s): model actors are started afresh",
                                self._scheduler_id, scheduler_id)
                    self._actors.clear()
                    if self._subscribed_client is client:
                        client.unsubscribe_topic(PROGRESS_TOPIC)
                self._scheduler_id, self._subscribed_client = scheduler_id, None
            if self._subscribed_client is None:
                client.subscribe_topic(PROGRESS_TOPIC, lambda event: self._on_progress(event[1]))
                self._subscribed_client = client
