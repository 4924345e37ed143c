"""The local hub speaks the hub's protocol as huggingface_hub's own client expects it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hfserver import HubServer

from .conftest import TINY


def test_snapshot_download_gets_every_file_once(
    hub: HubServer, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    target = Path(snapshot_download(TINY, local_dir=tmp_path / "out", endpoint=hub.endpoint))
    for name, source in tiny_files.items():
        assert (target / name).read_bytes() == source.read_bytes()
        assert len(hub.fetches(TINY, name)) == 1


def test_model_info_and_tree_carry_commit_sizes_and_checksums(
    hub: HubServer, tiny_files: dict[str, Path]
) -> None:
    api = HfApi(endpoint=hub.endpoint, token=False)
    info = api.model_info(TINY, revision="main")
    assert info.sha == hub.repos[TINY].commit
    listing = {f.path: f for f in api.list_repo_tree(TINY, revision=info.sha, recursive=True)}
    weights = listing["model.safetensors"]
    assert weights.size == tiny_files["model.safetensors"].stat().st_size  # type: ignore[union-attr]
    assert weights.lfs is not None  # type: ignore[union-attr]
    assert listing["config.json"].lfs is None  # type: ignore[union-attr]


def test_ranges_are_served_as_partial_content(hub: HubServer, tiny_files: dict[str, Path]) -> None:
    url = f"{hub.endpoint}/{TINY}/resolve/main/model.safetensors"
    response = httpx.get(url, headers={"Range": "bytes=100-"})
    assert response.status_code == 206
    assert response.content == tiny_files["model.safetensors"].read_bytes()[100:]
    assert response.headers["X-Repo-Commit"] == hub.repos[TINY].commit


def test_errors_map_to_the_clients_exceptions(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(TINY, revision="no-such-branch")
    hub.behaviour.token = "secret"
    with pytest.raises(HfHubHTTPError) as raised:
        hf_hub_download(TINY, "config.json", local_dir=tmp_path, endpoint=hub.endpoint, token=False)
    assert raised.value.response.status_code == 401
    assert hf_hub_download(
        TINY, "config.json", local_dir=tmp_path, endpoint=hub.endpoint, token="secret"
    )


def test_a_dropped_body_is_cut_short(hub: HubServer) -> None:
    hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = 1000, 1
    url = f"{hub.endpoint}/{TINY}/resolve/main/model.safetensors"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    assert httpx.get(url).status_code == 200  # one drop only
    assert hub.fetches(TINY, "model.safetensors")[0].body_bytes == 1000
