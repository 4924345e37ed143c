"""The local cluster's data plane: real server processes behind kwok pods, a Gateway, Prometheus and
the custom metrics API, all inside a network namespace whose only interface is `lo`.

- `isolation`: the guard every starter calls first;
- `podspec`: a pod's spec as host processes (what is substituted, and why) — pure;
- `probes`: startup/readiness/liveness as the kubelet runs them;
- `kubelet`: the local kubelet for pods of the server image;
- `volumes`: the provisioner (run by the kubelet) that binds claims to their host directories;
- `stages`: kwok's stages, so kwok leaves those pods to the local kubelet;
- `services`: Traefik, Prometheus and prometheus-adapter command lines and configuration — pure;
- `embedded`: what `hf download` of a model embedded in a wheel does locally.

`hack/localcluster.py` starts the pieces (`hack/cluster.sh up --with ...`).
"""
