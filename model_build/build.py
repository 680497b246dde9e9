"""Trace a checkpoint at the trace shape, quantize it, verify every variant, and write artifacts atomically."""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model_build import artifact, calibration
from model_build.checkpoint import LABELS, TRACE_INPUTS, Checkpoint, load_for_tracing
from model_build.encoding import EncodedPair, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores
from model_build.errors import BuildError, VerificationError
from model_build.mrpc import split_path
from model_build.parity_pairs import PARITY_PAIRS
from model_build.progress import progress
from model_build.quiet import deprecations_silenced

log = logging.getLogger(__name__)

TRACE_TOLERANCE = 1e-4  # traced vs eager fp32 logits: the same kernels, so only summation order differs
# Max |logit difference| of a quantized variant vs traced fp32 on the parity pairs, at every verified shape. The
# default MiniLM model measures 0.41 (int8) and 0.62 (eager int8) at 8x128 and up to 0.93 at 8x32, with logits
# spanning about +-3 (int8 activations are quantized per tensor, 7-bit on x86); a broken quantization (wrong
# input order, a lost layer) is off by several logits.
DEFAULT_INT8_TOLERANCE = 1.5
# A row's logits alone at its own length vs inside any verified batch shape, for variants whose answers must not
# depend on their batch (fp32, int8-calibrated): only fp32 summation order differs, plus the odd int8 rounding step.
INVARIANCE_TOLERANCE = 1e-3
BUILD_VARIANTS = ("fp32", "int8", "debug", "eager-int8", "int8-calibrated")
BATCH_INVARIANT_VARIANTS = ("fp32", "int8-calibrated")


def default_variants(calibration_data: Path | None) -> tuple[str, ...]:
    """Every variant the inputs allow: int8-calibrated needs MRPC train pairs to calibrate on."""
    return BUILD_VARIANTS if calibration_data is not None else tuple(v for v in BUILD_VARIANTS if v != "int8-calibrated")


@dataclass
class BuildOptions:
    """What `python -m model_build build` takes."""

    batch_size: int = 8
    seq_len: int = 128
    variants: Sequence[str] = ()  # () for every variant the inputs allow (see default_variants)
    tolerance: float = DEFAULT_INT8_TOLERANCE
    two_step: bool = False  # prepare_dynamic_jit + convert_dynamic_jit instead of quantize_dynamic_jit
    attn_implementation: str = "eager"
    name: str | None = None
    force: bool = False
    # Column buckets the runtime may pad to instead of seq_len (rows then shrink to the real count); each
    # (rows, bucket) shape is verified against the eager model before it is recorded in the manifest.
    # Steps of 16: on MRPC dev traffic 76% of padded tokens are real against 70% with 32/64/96/128, and the default
    # model served 15% more pairs/s.
    seq_buckets: Sequence[int] = (16, 32, 48, 64, 80, 96, 112, 128)
    # int8-calibrated: the MRPC folder whose train split calibrates the activation ranges, how many pairs, and
    # the activation width (8 needs an int8 kernel that does not saturate, checked; 7 is fbgemm's reduce_range).
    calibration_data: Path | None = None
    calibration_pairs: int = 512
    activation_bits: int = 8

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = default_variants(self.calibration_data)

    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, columns) shape the build verifies: 1..batch_size rows x each bucket up to seq_len."""
        buckets = sorted({b for b in self.seq_buckets if 8 <= b < self.seq_len} | {self.seq_len})
        return [(rows, cols) for cols in buckets for rows in range(1, self.batch_size + 1)]


@dataclass
class BuiltVariant:
    """One verified module, ready to save."""

    variant: str
    module: torch.jit.ScriptModule
    op_counts: dict[str, int]
    parity: dict[str, Any]
    qconfig: dict[str, Any] | None
    logits: list[torch.Tensor] = field(default_factory=list)
    shape_parity: dict[str, Any] = field(default_factory=dict)
    batch_invariance: dict[str, Any] = field(default_factory=dict)
    activation_ranges: list[calibration.ActivationRange] = field(default_factory=list)


# ---- pure steps -------------------------------------------------------------------------------------------


def trace(model: torch.nn.Module, example: PaddedBatch) -> torch.jit.ScriptModule:
    """torch.jit.trace with (input_ids, attention_mask, token_type_ids), the forward signature's order."""
    with torch.no_grad(), deprecations_silenced(tracing=True):
        return torch.jit.trace(model, example.args())


def quantize_int8(traced: torch.jit.ScriptModule, *, debug: bool = False, two_step: bool = False) -> torch.jit.ScriptModule:
    """Graph-mode dynamic quantization of every Linear, per-channel int8 weights (the tutorial's recipe)."""
    from torch.ao.quantization import convert_dynamic_jit, per_channel_dynamic_qconfig, prepare_dynamic_jit, quantize_dynamic_jit

    qconfig_dict = {"": per_channel_dynamic_qconfig}
    with deprecations_silenced():
        if two_step:
            prepared = prepare_dynamic_jit(traced, qconfig_dict)  # observers inserted: inspect prepared.graph here
            return convert_dynamic_jit(prepared, debug=debug)
        return quantize_dynamic_jit(traced, qconfig_dict, debug=debug)


def quantize_eager_int8(model: torch.nn.Module, example: PaddedBatch) -> torch.jit.ScriptModule:
    """Eager-mode dynamic quantization of nn.Linear (the tutorial's section 4 comparison), then traced."""
    from torch.ao.quantization import quantize_dynamic

    with deprecations_silenced():
        quantized = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    return trace(quantized, example)


def op_counts(module: torch.jit.ScriptModule) -> dict[str, int]:
    """Node kinds of the module's inlined graph, most frequent first."""
    return dict(Counter(node.kind() for node in module.inlined_graph.nodes()).most_common())


def count_linears(model: torch.nn.Module) -> tuple[int, int]:
    """(all nn.Linear layers, those inside the encoder)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return len(names), sum(1 for n in names if ".encoder." in f".{n}")


def linear_execution_order(model: torch.nn.Module, example: PaddedBatch) -> list[str]:
    """Names of the nn.Linear layers in the order a forward pass calls them (the order graph-mode packs them)."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        run(model, [example])
    finally:
        for hook in hooks:
            hook.remove()
    return order


def run(module: torch.nn.Module, batches: Sequence[PaddedBatch]) -> list[torch.Tensor]:
    """Logits of the real rows of each batch."""
    with torch.no_grad():
        return [module(*b.args())[0][: b.rows].clone() for b in batches]


def compare(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Max |logit| and |P(paraphrase)| differences and argmax agreement between two runs."""
    ref, cand = torch.cat(list(reference)), torch.cat(list(candidate))
    if not torch.isfinite(cand).all():
        return {"pairs": len(ref), "max_abs_logit_diff": float("inf"), "max_abs_score_diff": float("inf"), "argmax_agreement": 0.0}
    ref_scores, cand_scores = torch.tensor(paraphrase_scores(ref)), torch.tensor(paraphrase_scores(cand))
    return {
        "pairs": len(ref),
        "max_abs_logit_diff": float((ref - cand).abs().max()),
        "max_abs_score_diff": float((ref_scores - cand_scores).abs().max()),
        "argmax_agreement": float((ref.argmax(-1) == cand.argmax(-1)).float().mean()),
    }


# ---- checks -----------------------------------------------------------------------------------------------


def check_tokenizer(ckpt: Checkpoint, encoder: PairEncoder, pairs: Sequence[tuple[str, str]]) -> None:
    """The serving tokenizer (tokenizers on tokenizer.json) must give the checkpoint tokenizer's ids."""
    expected = ckpt.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=encoder.max_length)
    for i, row in enumerate(encoder.encode(pairs)):
        if list(row.input_ids) != expected["input_ids"][i] or list(row.token_type_ids) != expected["token_type_ids"][i]:
            raise VerificationError(
                f"tokenizer check failed: the saved tokenizer.json encodes parity pair {i} differently from the checkpoint's tokenizer"
            )


def check_ops(variant: str, counts: dict[str, int], linears: tuple[int, int]) -> None:
    """int8 graphs hold one int8 Linear op per Linear and no float one; debug graphs quantize every weight."""
    total, encoder = linears
    if variant in ("int8", "eager-int8", "int8-calibrated"):
        op, other = calibration.DYNAMIC_OP, calibration.FIXED_RANGE_OP
        if variant == "int8-calibrated":
            op, other = other, op
        found = counts.get(op, 0)
        if found < encoder or found != total or counts.get("aten::linear", 0) or counts.get(other, 0):
            raise VerificationError(
                f"op check failed for {variant}: {found} {op} ops, {counts.get(other, 0)} {other} and "
                f"{counts.get('aten::linear', 0)} float aten::linear for {total} Linear layers ({encoder} in the encoder)"
            )
    elif variant == "debug" and counts.get("aten::quantize_per_channel", 0) != total:
        raise VerificationError(
            f"op check failed for debug: {counts.get('aten::quantize_per_channel', 0)} quantized weights for {total} Linear layers"
        )


def check_parity(variant: str, parity: dict[str, Any], tolerance: float) -> None:
    """Fail when a variant's logits stray from the reference by more than its tolerance."""
    if not parity["max_abs_logit_diff"] <= tolerance:
        raise VerificationError(
            f"parity check failed for {variant}: max |logit difference| {parity['max_abs_logit_diff']:.4g} "
            f"exceeds {tolerance:g} on {parity['pairs']} pairs (argmax agreement {parity['argmax_agreement']:.1%})"
        )


@dataclass(frozen=True)
class ShapedBatch:
    """A batch padded to one verified shape, and which parity rows it holds."""

    batch: PaddedBatch
    row_ids: tuple[int, ...]


def short_rows(tokenizer_file: Path, rows: Sequence[EncodedPair], shapes: Sequence[tuple[int, int]]) -> list[EncodedPair]:
    """Parity pairs truncated (longest_first, as the service truncates) to each bucket that no whole pair fits."""
    extra: list[EncodedPair] = []
    for cols in sorted({c for _, c in shapes}):
        if not any(len(row) <= cols for row in [*rows, *extra]):
            extra += PairEncoder(tokenizer_file, cols).encode(PARITY_PAIRS[:4])
    return extra


def shape_batches(rows: Sequence[EncodedPair], shapes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], ShapedBatch]:
    """One batch per shape: parity rows that fit its columns (cycled), padded to exactly rows x columns."""
    batches = {}
    for n_rows, cols in shapes:
        fitting = [i for i, row in enumerate(rows) if len(row) <= cols]
        if not fitting:
            raise BuildError(f"no parity pair fits {cols} tokens; use larger --seq-buckets")
        ids = tuple(fitting[i % len(fitting)] for i in range(n_rows))
        batches[(n_rows, cols)] = ShapedBatch(pad_batch([rows[i] for i in ids], n_rows, cols), ids)
    return batches


def check_shapes(
    variant: str, got: dict[tuple[int, int], torch.Tensor], reference: dict[tuple[int, int], torch.Tensor], tolerance: float
) -> dict[str, Any]:
    """Logits at every recorded shape must stay within `tolerance` of the reference at that shape."""
    worst = 0.0
    for shape, logits in got.items():
        diff = float((logits - reference[shape]).abs().max()) if torch.isfinite(logits).all() else float("inf")
        if not diff <= tolerance:
            raise VerificationError(
                f"shape check failed for {variant} at {shape[0]}x{shape[1]}: max |logit difference| {diff:.4g} exceeds {tolerance:g}"
            )
        worst = max(worst, diff)
    return {"shapes": len(got), "max_abs_logit_diff": worst, "tolerance": tolerance}


def check_batch_invariance(
    variant: str,
    module: torch.nn.Module,
    rows: Sequence[EncodedPair],
    shaped: dict[tuple[int, int], ShapedBatch],
    at: dict[tuple[int, int], torch.Tensor],
    *,
    required: bool,
) -> dict[str, Any]:
    """How far a row's logits move between running alone at its own length and inside each verified batch shape.

    Measured for every variant; for `required` ones (fp32, int8-calibrated) beyond INVARIANCE_TOLERANCE fails the
    build. The runtime pads by length buckets by default only for artifacts that passed.
    """
    alone = run(module, [pad_batch([row], 1, len(row)) for row in rows])
    worst = max(float((at[shape][j] - alone[i][0]).abs().max()) for shape, item in shaped.items() for j, i in enumerate(item.row_ids))
    if required and not worst <= INVARIANCE_TOLERANCE:
        raise VerificationError(
            f"batch-invariance check failed for {variant}: a row's logits move by {worst:.4g} between batch shapes "
            f"(allowed {INVARIANCE_TOLERANCE:g})"
        )
    return {"batch_invariant": required, "max_abs_logit_diff": worst, "tolerance": INVARIANCE_TOLERANCE, "shapes": len(shaped)}


def calibrate(ckpt: Checkpoint, encoder: PairEncoder, layers: Sequence[str], opts: BuildOptions) -> list[calibration.ActivationRange]:
    """Activation ranges of every Linear over MRPC train pairs (for int8-calibrated)."""
    calibration.require_fixed_range_kernel(opts.activation_bits)
    rows = calibration.calibration_rows(opts.calibration_data, encoder, opts.calibration_pairs)
    observed = calibration.observe_ranges(ckpt.model, rows, layers)
    return calibration.activation_ranges(observed, layers, opts.activation_bits)


def check_reload(path: Path, batches: Sequence[PaddedBatch], expected: Sequence[torch.Tensor]) -> None:
    """The saved file, loaded back, must give the same logits as the module that was saved."""
    with deprecations_silenced():
        loaded = torch.jit.load(str(path), map_location="cpu")
    got = run(loaded, batches)
    if not all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(expected, got, strict=False)):
        raise VerificationError(f"reload check failed: {path} gives different logits after torch.jit.load")


# ---- the command ------------------------------------------------------------------------------------------


def build_variants(
    ckpt: Checkpoint,
    batches: Sequence[PaddedBatch],
    opts: BuildOptions,
    bar: Any,
    shaped: dict[tuple[int, int], ShapedBatch] | None = None,
    *,
    rows: Sequence[EncodedPair] = (),
    ranges: Sequence[calibration.ActivationRange] = (),
) -> list[BuiltVariant]:
    """Trace, quantize and verify every requested variant (at every shape of `shaped`); nothing is written here.

    `rows` are the parity rows `shaped` was cut from (for the batch-invariance check); `ranges` the calibrated
    activation ranges int8-calibrated needs.
    """
    model = ckpt.model
    shaped = shaped or {}
    reference = run(model, batches)
    traced = trace(model, batches[0])
    traced_logits = run(traced, batches)
    trace_parity = compare(reference, traced_logits)
    check_parity("fp32 trace vs eager", trace_parity, TRACE_TOLERANCE)
    eager_at = {shape: run(model, [b.batch])[0] for shape, b in shaped.items()}
    traced_at = {shape: run(traced, [b.batch])[0] for shape, b in shaped.items()}
    bar.update(1)
    linears = count_linears(model)
    per_channel = {
        "api": "torch.ao.quantization.quantize_dynamic_jit",
        "qconfig": "per_channel_dynamic_qconfig",
        "weight": "int8, per-channel affine (PerChannelMinMaxObserver)",
        "activation": "quint8, dynamic per-tensor scale at run time",
        "engine": torch.backends.quantized.engine,
    }
    built: list[BuiltVariant] = []
    for variant in opts.variants:
        if variant == "fp32":
            module, qconfig, parity = traced, None, dict(trace_parity, reference="eager fp32", tolerance=TRACE_TOLERANCE)
        else:
            if variant == "eager-int8":
                module = quantize_eager_int8(model, batches[0])
                qconfig = {
                    "api": "torch.ao.quantization.quantize_dynamic",
                    "modules": ["torch.nn.Linear"],
                    "weight": "int8, per-tensor",
                    "engine": torch.backends.quantized.engine,
                }
            elif variant == "int8-calibrated":
                module = calibration.fix_activation_ranges(quantize_int8(traced, two_step=opts.two_step), ranges)
                qconfig = dict(
                    per_channel,
                    activation=f"quint8 per-tensor, {opts.activation_bits}-bit, range fixed in the graph: min/max of the fp32 "
                    f"input of each Linear over {opts.calibration_pairs} MRPC train pairs (seeded sample)",
                    activation_bits=opts.activation_bits,
                    op=calibration.FIXED_RANGE_OP,
                    two_step=opts.two_step,
                )
            else:
                module = quantize_int8(traced, debug=variant == "debug", two_step=opts.two_step)
                qconfig = dict(per_channel, debug=variant == "debug", two_step=opts.two_step)
            parity = dict(compare(traced_logits, run(module, batches)), reference="traced fp32", tolerance=opts.tolerance)
        counts = op_counts(module)
        check_ops(variant, counts, linears)
        check_parity(variant, parity, parity["tolerance"])
        if variant == "fp32":
            at = traced_at
            shape_parity = check_shapes(variant, traced_at, eager_at, TRACE_TOLERANCE)
        else:
            at = {shape: run(module, [b.batch])[0] for shape, b in shaped.items()}
            shape_parity = check_shapes(variant, at, traced_at, opts.tolerance)
        invariance = (
            check_batch_invariance(variant, module, rows, shaped, at, required=variant in BATCH_INVARIANT_VARIANTS) if shaped else {}
        )
        parity["linear_layers"], parity["encoder_linear_layers"] = linears
        log.info("%s verified: %s", variant, {k: parity[k] for k in ("max_abs_logit_diff", "max_abs_score_diff", "argmax_agreement")})
        built.append(
            BuiltVariant(
                variant,
                module,
                counts,
                parity,
                qconfig,
                run(module, batches),
                shape_parity,
                invariance,
                list(ranges) if variant == "int8-calibrated" else [],
            )
        )
        bar.update(1)
    return built


def build(model_dir: Path, out: Path, opts: BuildOptions | None = None) -> dict[str, dict[str, Any]]:
    """The whole build: returns each variant's manifest; `out` holds one folder per variant, or nothing on failure."""
    opts = opts or BuildOptions()
    unknown = [v for v in opts.variants if v not in BUILD_VARIANTS]
    if unknown:
        raise BuildError(f"unknown variant {', '.join(unknown)}; choose from {', '.join(BUILD_VARIANTS)}")
    if "int8-calibrated" in opts.variants:
        if opts.calibration_data is None:
            raise BuildError("int8-calibrated needs MRPC train pairs to calibrate on: pass --calibration-data DIR")
        split_path(opts.calibration_data, "train")  # fail now, with the explanation of MRPC, not after tracing
        if opts.calibration_pairs < 1:
            raise BuildError(f"--calibration-pairs must be at least 1, not {opts.calibration_pairs}")
    if opts.batch_size < 1 or not 8 <= opts.seq_len <= 512:
        raise BuildError(f"trace shape {opts.batch_size}x{opts.seq_len} is out of range (batch >= 1, 8 <= seq-len <= 512)")
    if out.exists() and not opts.force:
        raise BuildError(f"{out} exists; pass --force to replace it")
    started = time.perf_counter()
    ckpt = load_for_tracing(model_dir, attn_implementation=opts.attn_implementation)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling folder, so the final rename is atomic and nothing partial is ever at `out`.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        tokenizer_dir = staging / "tokenizer"
        ckpt.tokenizer.save_pretrained(str(tokenizer_dir))
        encoder = PairEncoder(tokenizer_dir / artifact.TOKENIZER_FILE, opts.seq_len)
        check_tokenizer(ckpt, encoder, PARITY_PAIRS)
        rows = encoder.encode(PARITY_PAIRS)
        batches = [pad_batch(rows[i : i + opts.batch_size], opts.batch_size, opts.seq_len) for i in range(0, len(rows), opts.batch_size)]
        rows = rows + short_rows(tokenizer_dir / artifact.TOKENIZER_FILE, rows, opts.shapes())
        shaped = shape_batches(rows, opts.shapes())
        layers = linear_execution_order(ckpt.model, batches[0])
        ranges = calibrate(ckpt, encoder, layers, opts) if "int8-calibrated" in opts.variants else []
        with progress(total=1 + 2 * len(opts.variants), desc="build", unit="step") as bar:
            built = build_variants(ckpt, batches, opts, bar, shaped, rows=rows, ranges=ranges)
            manifests = {}
            for item in built:
                manifests[item.variant] = _write_variant(item, staging / item.variant, tokenizer_dir, ckpt, opts, batches, layers, started)
                bar.update(1)
        shutil.rmtree(tokenizer_dir)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        return manifests
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_variant(
    item: BuiltVariant,
    folder: Path,
    tokenizer_dir: Path,
    ckpt: Checkpoint,
    opts: BuildOptions,
    batches: Sequence[PaddedBatch],
    linear_layers: list[str],
    started: float,
) -> dict[str, Any]:
    import transformers

    shutil.copytree(tokenizer_dir, folder)
    model_path = folder / artifact.MODEL_FILE
    with deprecations_silenced():
        torch.jit.save(item.module, str(model_path))
    check_reload(model_path, batches, item.logits)
    manifest = {
        "format_version": artifact.FORMAT_VERSION,
        "name": opts.name or ckpt.path.resolve().name,
        "variant": item.variant,
        "trace_shape": {"batch_size": opts.batch_size, "seq_len": opts.seq_len},
        "verified_shapes": [list(shape) for shape in opts.shapes()],
        "shape_parity": item.shape_parity,
        "batch_invariance": item.batch_invariance,
        "activation_ranges": [asdict(r) for r in item.activation_ranges],
        "input_names": list(TRACE_INPUTS),
        "labels": list(LABELS),
        "model_file": artifact.MODEL_FILE,
        "model_sha256": artifact.sha256_file(model_path),
        "model_bytes": model_path.stat().st_size,
        "tokenizer": {
            "file": artifact.TOKENIZER_FILE,
            "sha256": artifact.sha256_file(folder / artifact.TOKENIZER_FILE),
            "truncation": "longest_first",
            "max_length": opts.seq_len,
        },
        "qconfig": item.qconfig,
        "attn_implementation": opts.attn_implementation,
        "linear_layers": linear_layers,
        "op_counts": {k: v for k, v in item.op_counts.items() if "linear" in k or "quant" in k},
        "parity": item.parity,
        "source": {"checkpoint": str(ckpt.path.resolve()), "config_sha256": ckpt.config_sha256},
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    artifact.write_manifest(folder, manifest)
    return manifest
