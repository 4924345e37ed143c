"""The local kubelet: runs the pods of Modelplane's server image as real processes on kwok nodes.

kwok plays the kubelet for every other pod. For pods that `podspec.runs_locally`, kwok's stages only
hand out the pod's IP (see `stages.py`); this process does what a kubelet does with the rest:

- runs the init containers in order, then the containers, as host processes
  (`podspec.plan_container` says what is substituted), each process in its own session, its
  output in `<state dir>/pods/<namespace>_<pod>_<uid>/logs/<container>.log`;
- runs the startup, readiness and liveness probes with the spec's periods and thresholds against
  the pod's IP, and writes `status` from them: phase, the Initialized/ContainersReady/Ready
  conditions, container statuses with `started`, `ready`, `restartCount`, `state` and
  `lastState` (exit codes), level-based: conditions another writer changed (the node lifecycle
  controller marks a silent node's pods not Ready) are written again, as the kubelet's status
  manager does;
- restarts exited containers per `restartPolicy` with the kubelet's back-off (10 s doubling to
  5 min, `CrashLoopBackOff` while waiting), and kills and restarts a container whose liveness or
  startup probe fails;
- on deletion runs the `preStop` hook, sends SIGTERM, SIGKILL at the grace period, and only then
  removes the pod object (grace 0), so kwok cannot hand the pod's IP to another pod while a process
  still holds it;
- provisions a PersistentVolume for every claim of the `modelplane-local` StorageClass, backed by
  the claim's directory (`volumes.py`), so claims bind;
- caps the server processes it runs at once (`--max-processes`, memory): a container over the cap
  waits with reason `LocalKubeletAtCapacity` and a message naming the cap.

It refuses to start outside an isolated network namespace (`isolation.require_isolated_network`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from lightkube import ApiError, AsyncClient, codecs, operators
from lightkube.core.generic_client import ALL_NS
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret
from lightkube.types import PatchType, on_error_retry

from dataplane.isolation import require_isolated_network
from dataplane.podspec import (
    FALLBACK_MESSAGE_BYTES,
    PodConfigError,
    PodLayout,
    ProcessPlan,
    plan_container,
    runs_locally,
    secret_volume_files,
    termination_message,
)
from dataplane.probes import Probe, ProbeState, check
from dataplane.volumes import LocalVolumeProvisioner

log = logging.getLogger("dataplane.kubelet")

Object = dict[str, Any]
CAPACITY_REASON = "LocalKubeletAtCapacity"
CONFIG_ERROR_REASON = "CreateContainerConfigError"
BACK_OFF_REASON = "CrashLoopBackOff"
# A container that ran this long without exiting restarts its back-off from the start (kubelet's).
BACK_OFF_RESET_S = 600


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def exit_code(returncode: int) -> int:
    """A process's return code as a container exit code (signals as 128 + N, as runtimes report)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class KubeletConfig:
    state_dir: Path
    bin_dir: Path
    max_processes: int = 6
    backoff_base_s: float = 10
    backoff_max_s: float = 300

    @property
    def claims_root(self) -> Path:
        """Where claims' directories live (`volumes.LocalVolumeProvisioner` provisions them)."""
        return self.state_dir / "claims"


class Container:
    """One (init) container of a pod: its process, its probes and the status they add up to."""

    def __init__(self, pod: PodRunner, spec: Object, plan: ProcessPlan, init: bool) -> None:
        self.pod, self.spec, self.plan, self.init = pod, spec, plan, init
        self.name = spec["name"]
        self.restart_count = 0
        self.state: Object = {"waiting": {"reason": "PodInitializing" if not init else "Waiting"}}
        self.last_state: Object = {}
        self.ready = False
        self.started = False
        self.process: asyncio.subprocess.Process | None = None
        self.kill_reason = ""
        self.output_offset = 0  # where this run's output starts in the container's log
        self.startup = Probe.from_spec(spec, spec.get("startupProbe"))
        self.readiness = Probe.from_spec(spec, spec.get("readinessProbe"))
        self.liveness = Probe.from_spec(spec, spec.get("livenessProbe"))

    def status(self) -> Object:
        status: Object = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
        }
        if self.process is not None:
            status["containerID"] = f"local://{self.process.pid}"
        if self.last_state:
            status["lastState"] = self.last_state
        return status

    def set_state(self, state: Object) -> None:
        self.state = state
        self.pod.publish()

    async def run(self, restart_policy: str) -> int:
        """Run until the container is done for good (init: success; Never: any exit) or the pod
        terminates; returns the last exit code."""
        kubelet = self.pod.kubelet
        backoff = kubelet.config.backoff_base_s
        while True:
            if not await kubelet.acquire_slot(self):
                return 0  # the pod terminated while waiting
            started_at, started_clock = now(), time.monotonic()
            try:
                code = await self._run_process(started_at)
            finally:
                kubelet.release_slot(self)
            terminated = {
                "exitCode": code,
                "reason": self.kill_reason or ("Completed" if code == 0 else "Error"),
                "startedAt": started_at,
                "finishedAt": now(),
            }
            if message := termination_message(self.spec, code, self._output()):
                terminated["message"] = message
            self.kill_reason = ""
            self.ready = False
            if self.pod.terminating or (self.init and code == 0):
                self.set_state({"terminated": terminated})
                return code
            restart = restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)
            if not restart:
                self.set_state({"terminated": terminated})
                return code
            if time.monotonic() - started_clock > BACK_OFF_RESET_S:
                backoff = kubelet.config.backoff_base_s
            self.restart_count += 1
            self.last_state = {"terminated": terminated}
            self.started = False
            message = (
                f"back-off {backoff:g}s restarting failed container={self.name} "
                f"pod={self.pod.name}_{self.pod.namespace}({self.pod.uid})"
            )
            log.info("%s: exited with %d; %s", self.pod.key, code, message)
            await kubelet.post_event(self.pod, "Warning", "BackOff", message)
            self.set_state({"waiting": {"reason": BACK_OFF_REASON, "message": message}})
            if await self.pod.sleep_unless_terminating(backoff):
                return code
            backoff = min(backoff * 2, kubelet.config.backoff_max_s)

    @property
    def log_path(self) -> Path:
        return self.pod.layout.pod_dir / "logs" / f"{self.name}.log"

    def _output(self) -> bytes:
        """The end of what the process wrote in its last run (as much as a message can hold)."""
        try:
            with self.log_path.open("rb") as log_file:
                end = log_file.seek(0, os.SEEK_END)
                log_file.seek(max(self.output_offset, end - FALLBACK_MESSAGE_BYTES))
                return log_file.read()
        except OSError:
            return b""

    async def _run_process(self, started_at: str) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"--- {started_at} starting {' '.join(self.plan.argv)}\n".encode())
            out.flush()
            self.output_offset = out.tell()
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *self.plan.argv,
                    env=dict(self.plan.env),
                    cwd=self.plan.cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                out.write(f"--- failed to start: {error}\n".encode())
                self.kill_reason = "StartError"
                return 128
        self.set_state({"running": {"startedAt": started_at}})
        log.info("%s: started %s (pid %d)", self.pod.key, self.name, self.process.pid)
        probing = None if self.init else asyncio.create_task(self._probe(self.process))
        try:
            return exit_code(await self.process.wait())
        finally:
            if probing is not None:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing

    async def _probe(self, process: asyncio.subprocess.Process) -> None:
        host = self.pod.ip
        http = self.pod.kubelet.http
        if self.startup is not None:
            state = ProbeState(self.startup)
            await asyncio.sleep(self.startup.initial_delay_s)
            while not state.healthy:
                ok, error = await check(self.startup, host, http)
                state.record(ok, error)
                if state.failed:
                    await self.kill(process, "Error", f"Startup probe failed: {state.last_error}")
                    return
                if not state.healthy:
                    await asyncio.sleep(self.startup.period_s)
        self.started = True
        self.pod.publish()
        loops = [self._readiness()]
        if self.liveness is not None:
            loops.append(self._liveness(process, self.liveness))
        await asyncio.gather(*loops)

    async def _readiness(self) -> None:
        if self.readiness is None:
            self.ready = True
            self.pod.publish()
            return
        state = ProbeState(self.readiness)
        while True:  # the first readiness probe runs as soon as the container has started
            ok, error = await check(self.readiness, self.pod.ip, self.pod.kubelet.http)
            if not ok:  # the kubelet records every failed readiness probe, not only transitions
                await self.pod.kubelet.post_event(
                    self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {error}"
                )
            if state.record(ok, error):
                self.ready = state.healthy
                self.pod.publish()
            await asyncio.sleep(self.readiness.period_s)

    async def _liveness(self, process: asyncio.subprocess.Process, probe: Probe) -> None:
        state = ProbeState(probe, healthy=True)
        await asyncio.sleep(probe.initial_delay_s)
        while True:
            await asyncio.sleep(probe.period_s)
            ok, error = await check(probe, self.pod.ip, self.pod.kubelet.http)
            state.record(ok, error)
            if not ok and not state.failed:
                await self.pod.kubelet.post_event(
                    self.pod, "Warning", "Unhealthy", f"Liveness probe failed: {error}"
                )
            if state.failed:
                await self.kill(process, "Error", f"Liveness probe failed: {state.last_error}")
                return

    async def kill(self, process: asyncio.subprocess.Process, reason: str, why: str) -> None:
        """Stop a container the way the kubelet does for a failed probe: SIGTERM, then SIGKILL."""
        log.info("%s: killing %s: %s", self.pod.key, self.name, why)
        self.kill_reason = reason
        await self.pod.kubelet.post_event(self.pod, "Warning", "Unhealthy", why)
        await self.pod.kubelet.post_event(
            self.pod, "Normal", "Killing", f"Stopping container {self.name}: {why}"
        )
        await stop_process(process, self.pod.grace_seconds)

    async def pre_stop(self) -> None:
        hook = (self.spec.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in hook:
            await asyncio.sleep(float(hook["sleep"]["seconds"]))
        elif "httpGet" in hook:
            probe = Probe.from_spec(self.spec, {"httpGet": hook["httpGet"], "timeoutSeconds": 10})
            if probe is not None:
                await check(probe, self.pod.ip, self.pod.kubelet.http)
        elif "exec" in hook:
            plan = self.plan
            hook_process = await asyncio.create_subprocess_exec(
                *hook["exec"]["command"], env=dict(plan.env), cwd=plan.cwd
            )
            await hook_process.wait()


async def stop_process(process: asyncio.subprocess.Process, grace_s: float) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def conditions_overwritten(pod: Object, written: Object) -> bool:
    """Whether the live pod's conditions differ from the ones this kubelet last wrote, in a
    condition type it writes (level-based status, as the kubelet's status manager keeps it)."""
    ours = {c["type"]: c["status"] for c in written.get("conditions", [])}
    live = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions", [])}
    return any(live.get(kind) != status for kind, status in ours.items())


class PodRunner:
    """Everything the kubelet does for one pod, from its IP to its deletion."""

    def __init__(self, kubelet: LocalKubelet, pod: Object) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.name, self.namespace, self.uid = meta["name"], meta["namespace"], meta["uid"]
        self.key = f"{self.namespace}/{self.name}"
        self.layout = PodLayout(
            pod_dir=kubelet.config.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}",
            claims_root=kubelet.config.claims_root,
            bin_dir=kubelet.config.bin_dir,
        )
        self.ip = ""
        # When this kubelet took the pod, before anything was pulled or started (status.startTime,
        # as the kubelet sets it; kept across restarts of the local kubelet by the pod's own).
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        self.terminating = False
        self.init_containers: list[Container] = []
        self.containers: list[Container] = []
        self.initialized = False
        self.config_error = ""
        self._has_ip = asyncio.Event()
        self._terminate = asyncio.Event()
        self._dirty = asyncio.Event()
        self._last_written: Object | None = None
        self.tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._write_status())]

    @property
    def grace_seconds(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        spec_grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(meta_grace if meta_grace is not None else spec_grace)

    def update(self, pod: Object) -> None:
        self.pod = pod
        if (
            self._last_written is not None
            and not self.terminating
            and conditions_overwritten(pod, self._last_written)
        ):
            # Someone else wrote our conditions (the node lifecycle controller marks a silent
            # node's pods not Ready): like the kubelet's status manager, write ours again.
            log.info("%s: the pod's conditions are not the ones we wrote; writing ours", self.key)
            self._last_written = None
            self.publish()
        ip = (pod.get("status") or {}).get("podIP")
        if ip and not self.ip:
            self.ip = ip
            self._has_ip.set()
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            self.terminating = True
            self._terminate.set()
            self.tasks.append(asyncio.create_task(self._terminate_and_delete()))

    def publish(self) -> None:
        self._dirty.set()

    async def sleep_unless_terminating(self, seconds: float) -> bool:
        """Sleep; True if the pod started terminating meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._terminate.wait(), seconds)
        return self.terminating

    async def _run(self) -> None:
        waiting = [asyncio.create_task(e.wait()) for e in (self._has_ip, self._terminate)]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        if self.terminating:
            return
        spec = self.pod["spec"]
        try:
            lookup = await self.kubelet.resolve_references(self.pod)
            secret_files = secret_volume_files(self.pod, lookup)
            self.init_containers = [
                Container(self, c, plan_container(self.pod, c, self.layout, lookup), init=True)
                for c in spec.get("initContainers") or []
            ]
            self.containers = [
                Container(self, c, plan_container(self.pod, c, self.layout, lookup), init=False)
                for c in spec["containers"]
            ]
            self._prepare_directories(secret_files)
        except (PodConfigError, OSError) as error:
            self.config_error = str(error)
            log.warning("%s: cannot run: %s", self.key, error)
            self.publish()
            return
        for container in (*self.init_containers, *self.containers):
            log.info(
                "%s: %s: %s", self.key, container.name, "; ".join(container.plan.substitutions)
            )
        self.publish()
        policy = spec.get("restartPolicy", "Always")
        for container in self.init_containers:
            code = await container.run("OnFailure" if policy == "Always" else policy)
            if code != 0 or self.terminating:
                self.publish()
                return
        self.initialized = True
        self.publish()
        await asyncio.gather(*(c.run(policy) for c in self.containers))
        self.publish()

    def _prepare_directories(self, secret_files: Mapping[str, Mapping[str, str]]) -> None:
        (self.layout.pod_dir / "home").mkdir(parents=True, exist_ok=True)
        for volume in self.pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                self.layout.volume_dir(volume["name"]).mkdir(parents=True, exist_ok=True)
            elif "secret" in volume:
                directory = self.layout.volume_dir(volume["name"])
                directory.mkdir(parents=True, exist_ok=True)
                source = volume["secret"]
                modes = {item["path"]: item.get("mode") for item in source.get("items") or []}
                for path, content in secret_files.get(volume["name"], {}).items():
                    file = directory / path  # relative, without `..`: the apiserver checks
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.unlink(missing_ok=True)  # a read-only mode would refuse the rewrite
                    # The Secret's bytes as they were (see resolve_references).
                    file.write_bytes(content.encode(errors="surrogateescape"))
                    file.chmod(modes.get(path) or source.get("defaultMode", 0o644))
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                (self.layout.claims_root / self.namespace / claim).mkdir(
                    parents=True, exist_ok=True
                )

    async def _terminate_and_delete(self) -> None:
        """preStop, SIGTERM, SIGKILL at the grace period, then remove the pod (grace 0)."""
        deadline = time.monotonic() + self.grace_seconds
        running = [c for c in self.containers if c.process and c.process.returncode is None]
        log.info("%s: deleting: preStop, then SIGTERM (grace %gs)", self.key, self.grace_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.pre_stop() for c in running)), self.grace_seconds
            )
        remaining = max(deadline - time.monotonic(), 0.0)
        await asyncio.gather(
            *(
                stop_process(c.process, remaining)
                for c in self.containers + self.init_containers
                if c.process is not None
            )
        )
        await asyncio.gather(*self.tasks[:1], return_exceptions=True)
        try:
            await self.kubelet.client.delete(
                Pod, self.name, namespace=self.namespace, grace_period=0
            )
        except ApiError as error:
            if error.status.code != 404:
                raise
        log.info("%s: deleted", self.key)
        self.tasks[1].cancel()  # nothing left to write status for

    async def kill_now(self) -> None:
        """The pod object is gone (a forced delete): stop its processes quickly."""
        self.terminating = True
        self._terminate.set()
        await asyncio.gather(
            *(
                stop_process(c.process, 2)
                for c in self.containers + self.init_containers
                if c.process is not None
            )
        )
        for task in self.tasks:
            task.cancel()

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> Object:
        containers = [c.status() for c in self.containers]
        inits = [c.status() for c in self.init_containers]
        if self.config_error:
            waiting = {"waiting": {"reason": CONFIG_ERROR_REASON, "message": self.config_error}}
            containers = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": waiting,
                }
                for c in self.pod["spec"]["containers"]
            ]
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        policy = self.pod["spec"].get("restartPolicy", "Always")
        phase = "Pending"
        if any(c.restart_count or "running" in c.state for c in self.containers):
            phase = "Running"
        if (
            policy != "Always"
            and self.containers
            and all("terminated" in c.state for c in self.containers)
        ):
            codes = [c.state["terminated"]["exitCode"] for c in self.containers]
            phase = "Succeeded" if not any(codes) else "Failed"
        if (
            any(
                "terminated" in c.state and c.state["terminated"]["exitCode"]
                for c in self.init_containers
            )
            and policy == "Never"
        ):
            phase = "Failed"

        def condition(kind: str, value: bool, reason: str = "") -> Object:
            # A strategic merge patch merges conditions by type: a None reason removes a stale one.
            return {
                "type": kind,
                "status": "True" if value else "False",
                "reason": reason if reason and not value else None,
            }

        status: Object = {
            "phase": phase,
            "startTime": self.start_time,
            "conditions": [
                condition("PodReadyToStartContainers", bool(self.ip)),
                condition(
                    "Initialized",
                    self.initialized or not self.init_containers,
                    "ContainersNotInitialized",
                ),
                condition("ContainersReady", ready, "ContainersNotReady"),
                condition("Ready", ready, "ContainersNotReady"),
            ],
            "containerStatuses": containers,
        }
        if inits:
            status["initContainerStatuses"] = inits
        return status

    async def _write_status(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            status = self.status()
            if status == self._last_written or (self.terminating and not self.containers):
                continue
            stamp = now()
            for entry in status["conditions"]:  # only transitions get a new time
                previous = next(
                    (
                        c
                        for c in (self._last_written or {}).get("conditions", [])
                        if c["type"] == entry["type"]
                    ),
                    None,
                )
                same = previous is not None and previous["status"] == entry["status"]
                entry["lastTransitionTime"] = (
                    previous["lastTransitionTime"] if previous is not None and same else stamp
                )
            try:
                await self.kubelet.client.patch(
                    Pod.Status,
                    self.name,
                    {"status": status},
                    namespace=self.namespace,
                    patch_type=PatchType.STRATEGIC,
                )
            except ApiError as error:
                if error.status.code == 404:
                    return
                log.warning("%s: status write failed: %s", self.key, error)
                await asyncio.sleep(1)
                self._dirty.set()
                continue
            except httpx.HTTPError as error:
                log.warning("%s: status write failed: %s", self.key, error)
                await asyncio.sleep(1)
                self._dirty.set()
                continue
            self._last_written = status


class LocalKubelet:
    def __init__(self, client: AsyncClient, config: KubeletConfig) -> None:
        self.client = client
        self.config = config
        self.pods: dict[str, PodRunner] = {}
        self.http = httpx.AsyncClient(trust_env=False)
        self._running: list[Container] = []
        self._background: set[asyncio.Task[None]] = set()

    async def acquire_slot(self, container: Container) -> bool:
        """Wait for room under the process cap; False if the pod terminated meanwhile."""
        while len(self._running) >= self.config.max_processes:
            names = ", ".join(sorted(c.pod.key for c in self._running))
            container.set_state(
                {
                    "waiting": {
                        "reason": CAPACITY_REASON,
                        "message": f"the local kubelet runs at most {self.config.max_processes} "
                        f"processes at once (--max-processes, memory); running: {names}",
                    }
                }
            )
            if await container.pod.sleep_unless_terminating(1):
                return False
        self._running.append(container)
        return True

    def release_slot(self, container: Container) -> None:
        with contextlib.suppress(ValueError):
            self._running.remove(container)

    async def resolve_references(self, pod: Object) -> Any:
        """Read the Secrets and ConfigMaps the pod's env and Secret volumes name, for
        `plan_container`'s and `secret_volume_files`' lookup."""
        namespace = pod["metadata"]["namespace"]
        references: list[tuple[str, str, str]] = []  # (kind, name, key)
        for container in (*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]):
            for variable in container.get("env") or []:
                source = variable.get("valueFrom") or {}
                for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if field in source:
                        references.append((kind, source[field]["name"], source[field]["key"]))
        for volume in pod["spec"].get("volumes") or []:
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                references += [
                    ("Secret", name, i["key"]) for i in volume["secret"].get("items", [])
                ]
        values: dict[tuple[str, str, str, str], str | None] = {}
        for kind, name, key in references:
            resource = Secret if kind == "Secret" else ConfigMap
            try:
                obj = await self.client.get(resource, name, namespace=namespace)
            except ApiError:
                values[(kind, namespace, name, key)] = None
                continue
            data: Mapping[str, str] = getattr(obj, "data", None) or {}
            raw = data.get(key)
            if raw is not None and kind == "Secret":
                # Bytes that are not UTF-8 survive the round trip to a Secret volume's file.
                raw = base64.b64decode(raw).decode(errors="surrogateescape")
            values[(kind, namespace, name, key)] = raw

        def lookup(kind: str, ns: str, name: str, key: str) -> str | None:
            return values.get((kind, ns, name, key))

        return lookup

    async def post_event(self, pod: PodRunner, kind: str, reason: str, message: str) -> None:
        """An Event on the pod, as the kubelet records them (`kubectl describe pod` shows them)."""
        event = codecs.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "uid": pod.uid,
                },
                "type": kind,
                "reason": reason,
                "message": message,
                "source": {"component": "modelplane-local-kubelet"},
                "firstTimestamp": now(),
                "lastTimestamp": now(),
                "count": 1,
            }
        )
        try:
            await self.client.create(event)
        except (ApiError, httpx.HTTPError) as error:  # an event is best effort, as in the kubelet
            log.warning("%s: could not record event %s: %s", pod.key, reason, error)

    def observe(self, event: str, pod: Object) -> None:
        if not runs_locally(pod) or not pod.get("spec", {}).get("nodeName"):
            return
        uid = pod["metadata"]["uid"]
        if event == "DELETED":
            runner = self.pods.pop(uid, None)
            if runner is not None and not runner.terminating:
                task = asyncio.create_task(runner.kill_now())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        runner = self.pods.get(uid)
        if runner is None:
            runner = self.pods[uid] = PodRunner(self, pod)
            log.info("%s: taking over from kwok (uid %s)", runner.key, uid)
        runner.update(pod)

    async def run(self) -> None:
        require_isolated_network("the local kubelet")
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "local kubelet: pods of the modelplane-server image run as processes "
            "(state %s, at most %d at once)",
            self.config.state_dir,
            self.config.max_processes,
        )
        async for event, pod in self.client.watch(
            Pod,
            namespace=ALL_NS,
            fields={"spec.nodeName": operators.not_equal("")},
            on_error=on_error_retry,
        ):
            self.observe(event, pod.to_dict())

    async def shutdown(self) -> None:
        """Stop every process this kubelet started (the cluster is going down)."""
        await asyncio.gather(*(runner.kill_now() for runner in self.pods.values()))
        await self.http.aclose()


def default_max_processes() -> int:
    """About one server process per 2 GiB of available memory, at most 8."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available_kib = next(
            int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable")
        )
    except (OSError, StopIteration, ValueError):
        return 4
    return max(1, min(8, available_kib // (2 * 1024 * 1024)))


async def serve(kubeconfig: Path, config: KubeletConfig) -> None:
    from lightkube import KubeConfig

    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), trust_env=False)
    kubelet = LocalKubelet(client, config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    watching = asyncio.create_task(kubelet.run())
    provisioning = asyncio.create_task(LocalVolumeProvisioner(client, config.claims_root).run())
    stop = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait(
        {watching, provisioning, stop}, return_when=asyncio.FIRST_COMPLETED
    )
    watching.cancel()
    provisioning.cancel()
    await kubelet.shutdown()
    for task in (watching, provisioning):
        if task in done and not task.cancelled() and task.exception() is not None:
            raise RuntimeError("the local kubelet's watch failed") from task.exception()
