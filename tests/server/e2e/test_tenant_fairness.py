"""Per-API-key fairness through the official `openai` client against the server as a real process:
one tenant's flood does not starve another's requests, and a tenant over its own queue limit gets a
429 that says so while the others are still served. One batch row (`--max-batch-size=1`) makes the
queue the only way in; order is read from completion order and /metrics, never from timings."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
KEY_FILE = """\
# the flooder, an ordinary tenant, and one with a queue of one
key-a tenant=a share=1
key-b tenant=b share=1
key-c tenant=c max_queue=1
"""


@pytest.fixture(scope="module")
def tenant_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("tenants")
    key_file = directory / "keys"
    key_file.write_text(KEY_FILE)
    with running_server(
        directory,
        f"--model={tiny_llama_dir}",
        f"--served-model-name={MODEL}",
        "--embedding-model=none",
        "--device=cpu",
        "--max-batch-size=1",
        f"--api-key-file={key_file}",
    ) as server:
        yield server


def client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def gauge(server: ServerProcess, series: str) -> int:
    """The value of one gauge series on /metrics (0 when absent)."""
    text = server.get("/metrics").text
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def waiting(server: ServerProcess, tenant: str) -> int:
    return gauge(server, f'modelplane_tenant_num_requests_waiting{{tenant="{tenant}"}}')


def in_background(
    server: ServerProcess, key: str, name: str, done: list[str], tokens: int
) -> threading.Thread:
    def run() -> None:
        with client(server, key) as api:
            api.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=tokens, temperature=0,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
        done.append(name)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_a_flood_from_one_tenant_does_not_starve_another(tenant_server: ServerProcess) -> None:
    done: list[str] = []
    flood = [in_background(tenant_server, "key-a", f"a{i}", done, 64) for i in range(12)]
    tenant_server.wait_until("a's backlog", lambda: waiting(tenant_server, "a") >= 8, 60)
    others = [in_background(tenant_server, "key-b", f"b{i}", done, 64) for i in range(2)]
    for thread in [*flood, *others]:
        thread.join(120)
    assert sorted(done) == sorted([f"a{i}" for i in range(12)] + ["b0", "b1"])
    # First come first served would finish b's after all twelve of a's; fair share interleaves
    # them, so several of a's backlog are still queued when b's last one is done.
    last_b = max(done.index("b0"), done.index("b1"))
    assert len(done) - 1 - last_b >= 3, done
    metrics = tenant_server.get("/metrics").text
    assert 'modelplane_tenant_requests_finished_total{tenant="b"} 2.0' in metrics


def test_a_tenant_over_its_queue_limit_gets_a_429_naming_it(tenant_server: ServerProcess) -> None:
    done: list[str] = []
    running = in_background(tenant_server, "key-a", "a-long", done, 400)  # holds the one row
    tenant_server.wait_until(
        "a's request running", lambda: gauge(tenant_server, "modelplane_num_requests_running"), 60
    )
    queued = in_background(tenant_server, "key-c", "c0", done, 4)
    tenant_server.wait_until("c's request queued", lambda: waiting(tenant_server, "c") == 1, 60)
    with client(tenant_server, "key-c") as api, pytest.raises(openai.RateLimitError) as raised:
        api.completions.create(model=MODEL, prompt="hi", max_tokens=4)
    response: httpx.Response = raised.value.response
    error = response.json()["error"]
    assert error["code"] == "tenant_queue_full"
    assert error["type"] == "rate_limit_error"
    assert "tenant 'c' has 1 requests waiting (its limit is 1)" in error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    # Another tenant is still admitted to the queue meanwhile.
    other = in_background(tenant_server, "key-b", "b", done, 4)
    for thread in (running, queued, other):
        thread.join(120)
    assert sorted(done) == ["a-long", "b", "c0"]
    metrics = tenant_server.get("/metrics").text
    assert (
        'modelplane_tenant_admission_rejections_total{reason="tenant_queue_full",tenant="c"} 1.0'
        in metrics
    )
