"""kwok's pod stages for a cluster with the local kubelet.

kwok keeps playing the kubelet for every pod except those of the server image: for those, one stage
hands out the pod's IP (kwok owns the address pool) and nothing else, and kwok's own pod stages
(ready, complete, delete) gain a selector that skips them. The selection is
`podspec.SERVER_IMAGE_JQ`, the same rule the local kubelet applies (`podspec.runs_locally`).
"""

from __future__ import annotations

import json

from dataplane.podspec import SERVER_IMAGE_JQ

ADDRESS_STAGE = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "modelplane-local-kubelet-pod-address"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": SERVER_IMAGE_JQ, "operator": "In", "values": ["true"]},
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.podIP", "operator": "DoesNotExist"},
            ]
        },
        "next": {
            # kwok's own pod-ready template, addresses only: phase, conditions and container
            # statuses are the local kubelet's.
            "statusTemplate": (
                "{{ $hostIPs := NodeIPsWith .spec.nodeName }}\n"
                "{{ with $hostIPs }}\nhostIP: {{ index . 0 | Quote }}\nhostIPs:\n"
                "{{ range . }}\n- ip: {{ . | Quote }}\n{{ end }}\n{{ end }}\n"
                "{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) "
                '( or .metadata.uid "" ) ( or .metadata.name "" ) '
                '( or .metadata.namespace "" ) }}\n'
                "{{ with $podIPs }}\npodIP: {{ index . 0 | Quote }}\npodIPs:\n"
                "{{ range . }}\n- ip: {{ . | Quote }}\n{{ end }}\n{{ end }}\n"
            )
        },
    },
}

_SKIP_OURS = (
    "    - key: "
    + json.dumps(SERVER_IMAGE_JQ)
    + "\n      operator: 'NotIn'\n      values:\n      - 'true'\n"
)


def with_local_kubelet(default_stages: str) -> str:
    """kwok's default stages (YAML documents) adjusted so the local kubelet owns our pods."""
    documents = []
    for document in default_stages.split("\n---"):
        if "kind: Pod\n" in document and "    matchExpressions:\n" in document:
            documents.append(
                document.replace(
                    "    matchExpressions:\n", "    matchExpressions:\n" + _SKIP_OURS, 1
                )
            )
        else:
            documents.append(document)
    # JSON is YAML: the address stage needs no template engine of ours.
    return "\n---".join(documents) + "\n---\n" + json.dumps(ADDRESS_STAGE, indent=2) + "\n"
