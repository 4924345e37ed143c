"""The command line and the settings: flags mirror MODELPLANE_* variables, flags win, bad values
exit 2, the engine configurations follow, and nothing on this path imports torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelplane_server import cli
from modelplane_server.engine.contract import EmbeddingConfig, GenerationConfig
from modelplane_server.settings import ServerSettings

DOCS = Path(__file__).resolve().parents[3] / "docs"
CONTRACT = (DOCS / "server-contract.md").read_text(encoding="utf-8")
# `| `--flag` | meaning | `default` |` rows of the contract's flag table.
FLAG_ROWS = re.findall(r"^\| `(--[a-z0-9-]+)`.*\| (.+) \|$", CONTRACT, flags=re.MULTILINE)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(f"MODELPLANE_{name.upper()}", raising=False)


def test_the_flags_are_the_contracts_and_the_key_is_not_a_flag() -> None:
    options = {
        option
        for action in cli.build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    documented = {flag for flag, _ in FLAG_ROWS}
    assert len(documented) > 15
    assert documented == options
    assert "--api-key" not in options  # a key on the command line shows up in `ps`


@pytest.mark.parametrize(("flag", "default"), FLAG_ROWS)
def test_documented_defaults_are_the_settings_defaults(flag: str, default: str) -> None:
    documented = re.fullmatch(r"`(.*)`", default.strip())
    if documented is None:  # "empty", "none", "derived from the model"
        assert default.strip() in {"empty", "none", "derived from the model"}
        return
    name = flag.removeprefix("--").replace("-", "_")
    actual = ServerSettings.model_fields[name].default
    if isinstance(actual, float) and actual.is_integer():
        actual = int(actual)  # the table writes 60, the field holds 60.0
    assert str(actual) == documented.group(1), (flag, actual)


def test_defaults_match_the_contract() -> None:
    settings = cli.parse_settings([])
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert (settings.max_batch_size, settings.max_batch_tokens, settings.max_queue) == (
        32,
        4096,
        256,
    )
    assert (settings.queue_timeout_s, settings.request_timeout_s) == (60, 600)
    assert (settings.drain_timeout_s, settings.liveness_stall_s) == (30, 30)
    assert settings.api_keys().keys == ()


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPLANE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("MODELPLANE_PORT", "9000")
    monkeypatch.setenv("MODELPLANE_API_KEY", "secret")
    settings = cli.parse_settings(["--max-batch-size=16", "--drain-timeout-s", "5"])
    assert settings.max_batch_size == 16
    assert settings.port == 9000
    assert settings.drain_timeout_s == 5
    assert [key.key for key in settings.api_keys().keys] == ["secret"]


@pytest.mark.parametrize(
    "argv",
    [["--max-batch-size=0"], ["--port=http"], ["--dtype=float64"], ["--device=tpu"], ["--nope=1"]],
)
def test_bad_values_exit_with_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_settings(argv)
    assert exit_info.value.code == 2
    assert "modelplane-server" in capsys.readouterr().err


def test_settings_build_the_engine_configs(tmp_path: Path) -> None:
    settings = cli.parse_settings(
        [
            f"--model={tmp_path}",
            "--gguf-file=m.gguf",
            "--served-model-name=llm",
            "--dtype=bfloat16",
            "--device=cuda:1",
            "--max-batch-size=8",
            "--max-batch-tokens=1024",
            "--max-prefill-tokens=256",
            "--prefix-cache-tokens=0",
            "--max-queue=10",
            "--max-queue-tokens=5000",
            "--embedding-model=/models/minilm",
            "--embedding-max-batch-size=64",
            "--max-wait-ms=2.5",
        ]
    )
    assert settings.generation_config() == GenerationConfig(
        model=str(tmp_path),
        gguf_file="m.gguf",
        served_model_name="llm",
        dtype="bfloat16",
        device="cuda:1",
        max_batch_size=8,
        max_batch_tokens=1024,
        max_prefill_tokens=256,
        prefix_cache_tokens=0,
        max_queue=10,
        max_queue_tokens=5000,
    )
    assert settings.embedding_config() == EmbeddingConfig(
        model="/models/minilm",
        dtype="bfloat16",
        device="cuda:1",
        max_batch_size=64,
        max_wait_ms=2.5,
    )
    assert cli.parse_settings(["--embedding-model=none"]).embedding_config() is None


def test_help_lists_flags_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-queue-tokens" in out
    assert "MODELPLANE_MAX_QUEUE_TOKENS" in out
    assert "serve" in out


def test_the_cli_and_app_import_no_torch() -> None:
    code = (
        "import sys, modelplane_server.cli, modelplane_server.http.app, "
        "modelplane_server.http.server; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
