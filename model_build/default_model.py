"""The README's run command's model: reuse cached artifacts, else fine-tune a base (or take MODEL_DIR) and build them."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from artifact.errors import ArtifactError
from artifact.manifest import Variant, verify_artifact
from model_build.bases import DEFAULT_BASE, Base, base
from model_build.build import DEFAULT_INT8_TOLERANCE, BuildOptions, build, default_variants
from model_build.checkpoint import config_hash, read_config
from model_build.errors import BuildError
from model_build.finetune import FinetuneConfig, estimated_seconds, finetune, trained_with, training_steps
from model_build.mrpc import load_split, split_path
from model_build.recipes import DEFAULT_SEED, recipe

log = logging.getLogger(__name__)
# Served or compared by default; openvino-int8 only where openvino and nncf are installed (default_variants says so).
SERVED_VARIANTS = (Variant.FP32, Variant.INT8, Variant.INT8_CALIBRATED, Variant.OPENVINO_INT8)


def _cached(artifacts: Path, config_sha256: str | None, variants: tuple[Variant, ...]) -> bool:
    try:
        manifests = [verify_artifact(artifacts / v) for v in variants]
    except ArtifactError as exc:
        if artifacts.exists():
            log.warning("cached artifacts are not usable (%s); rebuilding", exc)
        return False
    return config_sha256 is None or all(m.source.config_sha256 == config_sha256 for m in manifests)


def _retrain_reason(checkpoint: Path, chosen: Base) -> str | None:
    """Why the cached checkpoint of a base must be (re)trained, or None when it is its current recipe's.

    A checkpoint of an earlier recipe (the same config.json, other weights) would otherwise be served, and its
    artifacts reused, forever after an upgrade.
    """
    if not (checkpoint / "config.json").is_file():
        return f"no {chosen.name} checkpoint yet"
    if not trained_with(checkpoint, recipe(chosen.recipe), DEFAULT_SEED):
        return f"the cached {chosen.name} checkpoint was not trained by its recipe {chosen.recipe!r} (seed {DEFAULT_SEED})"
    return None


def model_root(cache: Path, name: str) -> Path:
    """A base's folder in the model cache (the default keeps the folder it always had)."""
    return cache / ("default" if name == DEFAULT_BASE else name)


def ensure_default_artifacts(cache: Path, data_dir: Path, model_dir: Path | None = None, model: str = DEFAULT_BASE) -> Path:
    """Return a folder holding the verified served variants of `model` (a base of model_build.bases), fine-tuning and
    building them if needed.

    With `model_dir` (any local MRPC classifier checkpoint of a known family) the fine-tuning is skipped; its artifacts
    are cached under a key of its path, and rebuilt when its config.json changes.
    """
    chosen = base(model)
    if model_dir is not None:
        read_config(model_dir)
        key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
        root, checkpoint, name, expected = cache / f"{model_dir.resolve().name}-{key}", model_dir, None, config_hash(model_dir)
    else:
        root, name = model_root(cache, chosen.name), chosen.served_name
        checkpoint = root / "checkpoint"
        retrain = _retrain_reason(checkpoint, chosen)
        expected = None if retrain else config_hash(checkpoint)
    artifacts = root / "artifacts"
    calibration: Path | None = data_dir
    try:
        split_path(data_dir, "train")
    except BuildError:
        if model_dir is not None:  # fine-tuning needs MRPC anyway; a given checkpoint can go without int8-calibrated
            log.warning("no MRPC train split in %s: building without int8-calibrated (it calibrates on MRPC train)", data_dir)
            calibration = None
    served = tuple(v for v in SERVED_VARIANTS if v in default_variants(calibration))
    if expected is not None and _cached(artifacts, expected, served):
        log.info("using cached artifacts in %s", artifacts)
        return artifacts
    if model_dir is None and retrain:
        for split in ("train", "dev"):
            split_path(data_dir, split)  # fail now, with the explanation of MRPC, not after loading a model
        config = FinetuneConfig(recipe(chosen.recipe), DEFAULT_SEED)
        steps = training_steps(len(load_split(data_dir, "train")), config.recipe)
        log.info(
            "%s: fine-tuning %s on MRPC train by recipe %r, about %.0f minutes here "
            "in fp32, less where this CPU's bf16 is faster (the bar below shows the time left), "
            "then about %.0f minutes to build and verify %s",
            retrain,
            chosen.description,
            chosen.recipe,
            estimated_seconds(steps, config.threads, chosen.parameters) / 60,
            chosen.build_minutes,
            ", ".join(served),
        )
        report = finetune(data_dir, checkpoint, base_model=chosen.locate(cache), config=config, force=True)
        log.info("fine-tuned in %.0f s; dev F1 %.4f, accuracy %.4f (scored once)", report.seconds, report.dev_f1, report.dev_accuracy)
    log.info("building artifacts from %s", checkpoint)
    # The served and compared variants only: debug and eager-int8 are for `model_build build --variant all` and
    # evaluate, and would add a minute to the first start.
    opts = BuildOptions(
        name=name,
        force=True,
        calibration_data=calibration,
        variants=served,
        tolerance=DEFAULT_INT8_TOLERANCE if chosen.int8_tolerance is None else chosen.int8_tolerance,
        float_layers=chosen.float_layers,
        float_layer_variants=chosen.float_layer_variants,
    )
    build(checkpoint, artifacts, opts)
    if not _cached(artifacts, config_hash(checkpoint), served):
        raise BuildError(f"artifacts in {artifacts} did not verify after building")
    return artifacts


# The cascade the README's run command serves with MODEL=cascade: its two models, and the band `python -m model_build
# cascade` chose from their searches' out-of-fold scores on MRPC train (docs/model.md, "The cascade"), committed like
# DEFAULT_RECIPE so a first start does not repeat two hours of cross-validation. Rerun the command to choose again.
CASCADE_STAGES = (("fast", DEFAULT_BASE), ("accurate", "mpnet-base"))
CASCADE_CHOICE = Path(__file__).with_name("cascade_choice.json")


def ensure_cascade(cache: Path, data_dir: Path) -> str:
    """Both models' artifacts and the cascade's folder, as PARASERVE_MODELS (`fast=...,accurate=...,cascade=...`)."""
    from artifact.cascade import CASCADE_FORMAT, CascadeBand, CascadeFile, write_cascade

    folders = {name: ensure_default_artifacts(cache, data_dir, model=base_name) for name, base_name in CASCADE_STAGES}
    chosen = json.loads(CASCADE_CHOICE.read_text(encoding="utf-8"))
    low, high = chosen["band"]
    fast, accurate = (base(base_name).served_name for _, base_name in CASCADE_STAGES)
    spec = CascadeFile(
        format_version=CASCADE_FORMAT, name="cascade", fast=fast, accurate=accurate, band=CascadeBand(low=low, high=high), chosen=chosen
    )
    folders["cascade"] = write_cascade(cache / "cascade", spec).parent
    return ",".join(f"{name}={folder}" for name, folder in folders.items())
