"""The download's progress over HTTP: what the operator reads for a ModelCache's status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modelplane_server.progress_server import serve_progress

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_progress_is_served_as_the_file_says_now(tmp_path: Path) -> None:
    progress = tmp_path / "progress.json"
    server = serve_progress("127.0.0.1", 0, progress)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with DIRECT.open(f"{url}/progress", timeout=5) as response:
            assert json.load(response) == {}  # nothing written yet
        progress.write_text(json.dumps({"phase": "Downloading", "bytesDone": 7}))
        with DIRECT.open(f"{url}/progress", timeout=5) as response:
            assert json.load(response) == {"phase": "Downloading", "bytesDone": 7}
        assert not server.final_read.is_set()
        progress.write_text(json.dumps({"phase": "Complete", "bytesDone": 9, "bytesTotal": 9}))
        with DIRECT.open(f"{url}/progress", timeout=5) as response:
            assert json.load(response)["phase"] == "Complete"
        assert server.final_read.is_set()  # the download may exit now
        with pytest.raises(urllib.error.HTTPError) as missing:
            DIRECT.open(f"{url}/other", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.shutdown()
        server.server_close()
