"""REST handlers of the data lifecycle: one run (its status, its deletion) and the data home's disk use."""

from __future__ import annotations

from app.rest_base import ApiHandler, platform


class RunHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        self.send(await self.call(platform().runs.status, run_id))

    async def delete(self, run_id: str) -> None:
        """A finished run's row and files; 409 while it is queued or running (cancel it first)."""
        self.send(await self.call(platform().runs.delete, run_id, user=self.user))


class UsageHandler(ApiHandler):
    async def get(self) -> None:
        from app.lifecycle import usage

        self.send(await self.call(usage, platform()))


UUID = r"([^/]+)"
LIFECYCLE_ROUTES = [
    (rf"/api/runs/{UUID}", RunHandler, {}),
    (r"/api/usage", UsageHandler, {}),
]
