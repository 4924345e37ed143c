"""Reading a running download's progress: `modelplane-server download --progress-port` serves its
progress.json at http://<pod IP>:<port>/progress. A pod that does not answer (starting, gone) is
no progress, never an error: the Job's own status still says where the download stands."""

from __future__ import annotations

from typing import Any

import httpx

from modelplane_operator.server_contract import DOWNLOAD_PROGRESS_PATH, DOWNLOAD_PROGRESS_PORT

TIMEOUT_SECONDS = 2.0


class ProgressReader:
    """One HTTP client for every download's progress."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT_SECONDS)

    async def read(self, pod_ip: str) -> dict[str, Any] | None:
        """The progress the pod serves now, or None."""
        try:
            response = await self._client.get(
                f"http://{pod_ip}:{DOWNLOAD_PROGRESS_PORT}{DOWNLOAD_PROGRESS_PATH}"
            )
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) and body else None

    async def close(self) -> None:
        await self._client.aclose()
