"""`python -m dataplane kubelet ...` (started by `hack/cluster.sh up --with kubelet`) and
`python -m dataplane check` (exit 0 only inside an isolated network namespace)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from dataplane.isolation import NotIsolatedError, require_isolated_network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataplane")
    sub = parser.add_subparsers(dest="command", required=True)
    kubelet = sub.add_parser("kubelet", help="run pods of the server image as local processes")
    kubelet.add_argument("--kubeconfig", type=Path, required=True)
    kubelet.add_argument("--state-dir", type=Path, required=True)
    kubelet.add_argument("--max-processes", type=int, default=0, help="0: from free memory")
    kubelet.add_argument("--backoff-base-s", type=float, default=10)
    sub.add_parser("check", help="exit 0 inside an isolated network namespace, 1 (and why) outside")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            require_isolated_network("the data plane")
            return 0
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        for noisy in ("httpx", "httpx2"):  # one line per API call otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from dataplane.kubelet import KubeletConfig, default_max_processes, serve

        config = KubeletConfig(
            state_dir=args.state_dir,
            bin_dir=Path(sys.executable).parent,
            max_processes=args.max_processes or default_max_processes(),
            backoff_base_s=args.backoff_base_s,
        )
        asyncio.run(serve(args.kubeconfig, config))
    except NotIsolatedError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
