"""The `modelplane-operator` command: `run` the operator, `render` a CR offline, print the `crd`.

`render -f cr.yaml` prints every child manifest without a cluster (a GitOps preview); without a
`metadata.uid` in the file the children carry no owner reference.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from modelplane_operator import canary_control, crd
from modelplane_operator.kinds import GATEWAY_API_GROUP, OPTIONAL_CRDS, PROMETHEUS_OPERATOR_GROUP
from modelplane_operator.models import API_VERSION, KIND, ModelDeploymentSpec
from modelplane_operator.render import Owner, RenderOptions, render

if TYPE_CHECKING:  # the settings import kopf: only `run` needs it at run time
    from modelplane_operator.settings import OperatorSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelplane-operator", description="The ModelDeployment operator."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator against the current cluster")
    run.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace or glob (repeat for more); default: the whole cluster",
    )
    run.add_argument(
        "--verbose", action="store_true", help="debug logging (else MODELPLANE_OPERATOR_LOG_LEVEL)"
    )
    show = commands.add_parser("render", help="print the children of a ModelDeployment as YAML")
    show.add_argument("-f", "--filename", required=True, type=Path, help="ModelDeployment YAML")
    show.add_argument(
        "-n",
        "--namespace",
        help="namespace of the children (default: the resource's own, else 'default')",
    )
    show.add_argument(
        "--assume-prometheus-operator",
        action="store_true",
        help="render the Prometheus Operator's kinds as if their CRDs were installed",
    )
    show.add_argument(
        "--assume-gateway-api",
        action="store_true",
        help="render the HTTPRoute (spec.route) as if the Gateway API CRDs were installed",
    )
    commands.add_parser("crd", help="print the CustomResourceDefinition")
    return parser


def render_file(
    path: Path, prometheus_operator: bool, namespace: str | None = None, gateway_api: bool = False
) -> str:
    """Every child manifest of the ModelDeployment(s) in `path`, as a YAML stream; a canary as it
    starts (no weight until its pods are ready)."""
    documents: list[dict[str, Any]] = []
    for body in yaml.safe_load_all(path.read_text()):
        if not body:
            continue
        if body.get("apiVersion") != API_VERSION or body.get("kind") != KIND:
            raise ValueError(f"{path}: expected {API_VERSION} {KIND}, got {body.get('kind')}")
        metadata = body.get("metadata") or {}
        spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        owner = Owner(
            name=metadata["name"],
            namespace=namespace or metadata.get("namespace", "default"),
            uid=metadata.get("uid"),
        )
        installed = frozenset(
            crd
            for crd in OPTIONAL_CRDS
            if (prometheus_operator and crd.endswith(PROMETHEUS_OPERATOR_GROUP))
            or (gateway_api and crd.endswith(GATEWAY_API_GROUP))
        )
        options = RenderOptions(installed, canary=canary_control.preview(spec))
        documents += render(owner, spec, options).children
    return yaml.safe_dump_all(documents, sort_keys=False, width=100)


def run_settings(namespaces: list[str] | None, verbose: bool) -> OperatorSettings:
    """The environment's settings (MODELPLANE_OPERATOR_*), overridden by `run`'s flags."""
    from modelplane_operator.settings import OperatorSettings

    overrides: dict[str, Any] = {"namespaces": namespaces} if namespaces else {}
    if verbose:
        overrides["log_level"] = "debug"
    return OperatorSettings(**overrides)


def _run(namespaces: list[str] | None, verbose: bool) -> None:
    from modelplane_operator import handlers, metrics

    settings = run_settings(namespaces, verbose)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One INFO line per HTTP request (every Lease renewal, every read) is noise, not a log.
    for chatty in ("httpx", "httpx2"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    metrics.serve(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    context = handlers.OperatorContext(settings=settings)
    asyncio.run(handlers.operate(settings, context, liveness_endpoint=liveness))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "crd":
        sys.stdout.write(crd.render_yaml())
        return 0
    if arguments.command == "render":
        try:
            rendered = render_file(
                arguments.filename,
                arguments.assume_prometheus_operator,
                arguments.namespace,
                arguments.assume_gateway_api,
            )
            sys.stdout.write(rendered)
        except (ValidationError, ValueError, OSError) as error:
            sys.stderr.write(f"modelplane-operator render: {error}\n")
            return 1
        return 0
    _run(arguments.namespace, arguments.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
