"""REST handlers of one dataset and of run groups: delete a dataset (with its stored embeddings, and with its
finished runs when asked), see and free its embeddings, and the runs submitted together (an integration's models)."""

from __future__ import annotations

from app.rest_base import ApiError, ApiHandler, platform
from app.rest_json import dataset_json, run_json


class DatasetHandler(ApiHandler):
    async def get(self, dataset_id: str) -> None:
        p = platform()
        ds = await self.call(p.datasets.get, dataset_id)
        self.send(dataset_json(ds, await self.call(p.datasets.embeddings_size, ds)))

    async def delete(self, dataset_id: str) -> None:
        cascade = self.get_query_argument("cascade", "false")
        if cascade not in ("true", "false"):
            raise ApiError(400, "invalid_request", "cascade must be true or false.")
        self.send(await self.call(platform().datasets.delete, dataset_id, cascade == "true", user=self.user))


class DatasetEmbeddingsHandler(ApiHandler):
    async def get(self, dataset_id: str) -> None:
        self.send(await self.call(platform().datasets.embeddings_of, dataset_id))

    async def delete(self, dataset_id: str) -> None:
        """Another user's dataset's: 403 unless the caller is an admin."""
        self.send(await self.call(platform().datasets.delete_embeddings, dataset_id, user=self.user))


class GroupHandler(ApiHandler):
    async def get(self, group_id: str) -> None:
        """The runs of one submission and their metrics side by side (models as rows)."""
        runs = await self.call(platform().runs.group, group_id)
        self.send({"group_id": group_id, "application": runs[0].application_id, "dataset": runs[0].dataset_id,
                   "runs": [run_json(r) for r in runs],
                   "table": [{"model": r.model_id, "run_id": r.id, "status": r.status,
                              "untrained": r.parameters.get("weights") == "generated",
                              **(r.metrics.get("metrics") or {}), **(r.metrics.get("aggregates") or {})}
                             for r in runs]})


UUID = r"([^/]+)"
DATASET_ROUTES = [
    (rf"/api/datasets/{UUID}", DatasetHandler, {}),
    (rf"/api/datasets/{UUID}/embeddings", DatasetEmbeddingsHandler, {}),
    (rf"/api/groups/{UUID}", GroupHandler, {}),
]
