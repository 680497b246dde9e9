"""Trace a checkpoint at the trace shape, quantize it, verify every variant, and write artifacts atomically."""

from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from artifact import manifest as fmt
from artifact.encoding import LABELS, EncodedPair, InputSpec, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores, row_of
from artifact.engines import OPENVINO, TORCHSCRIPT
from artifact.errors import KernelUnsupported
from artifact.kernels import DYNAMIC_OP, FIXED_RANGE_OP, cpu_description, require_fixed_range_kernel
from artifact.manifest import ActivationRange, BatchInvariance, Int8Scheme, Manifest, Variant
from artifact.quiet import deprecations_silenced, load_module, save_module
from model_build import calibration, openvino_build
from model_build.checkpoint import Checkpoint, load_for_tracing
from model_build.errors import BuildError, VerificationError
from model_build.mrpc import split_path
from model_build.parity_pairs import PARITY_PAIRS
from model_build.progress import progress

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


def default_variants(calibration_data: Path | None) -> tuple[Variant, ...]:
    """Every variant the inputs and this host allow: int8-calibrated and openvino-int8 need MRPC train pairs to
    calibrate on; openvino-int8 needs openvino and nncf installed (said once in the log when they are not)."""
    chosen = []
    for variant, recipe in RECIPES.items():
        if recipe.needs_calibration and calibration_data is None:
            continue
        try:
            WRITERS[recipe.engine].require()
        except BuildError as exc:
            log.info("%s not built: %s", variant, exc)
            continue
        chosen.append(variant)
    return tuple(chosen)


@dataclass
class BuildOptions:
    """What `python -m model_build build` takes."""

    batch_size: int = 8
    seq_len: int = 128
    variants: Sequence[Variant | str] = ()  # () for every variant the inputs allow (see default_variants)
    tolerance: float = DEFAULT_INT8_TOLERANCE
    two_step: bool = False  # prepare_dynamic_jit + convert_dynamic_jit instead of quantize_dynamic_jit
    attn_implementation: str = "eager"
    name: str | None = None
    force: bool = False
    # Column buckets the runtime may pad to instead of seq_len (rows then shrink to the real count); each
    # (rows, bucket) shape is verified against the eager model before it is recorded in the manifest.
    # Steps of 16: on MRPC dev traffic 76% of padded tokens are real against 70% with 32/64/96/128 (15% more pairs/s).
    # Steps of 8 served the same (bench/service.py --engines --rounds 3, AMD EPYC: TorchScript 177.8 vs 178.9 pairs/s,
    # OpenVINO 222.7 vs 233.7) for +80 MB and +190 MB of RSS (twice the shapes warmed and cached) and a longer build.
    seq_buckets: Sequence[int] = (16, 32, 48, 64, 80, 96, 112, 128)
    # int8-calibrated: the MRPC folder whose train split calibrates the activation ranges, how many pairs, and the
    # widths. 8-bit activations with 7-bit weights fit fbgemm's AVX2 int16 pair sums, so the artifact gives the
    # same scores on every x86-64 CPU (see README, "Every x86-64 host"); 8 x 8 bits needs VNNI wherever it runs.
    calibration_data: Path | None = None
    calibration_pairs: int = 512
    activation_bits: int = 8
    weight_bits: int = 7
    # A regular expression on Linear names: the layers the int8 variants (int8, int8-calibrated, openvino-int8) keep in
    # float. Empty: every Linear is int8 (the tutorial's recipe). bench/int8_recipes.py measures what a checkpoint needs.
    float_layers: str = ""
    # Which variants keep them ((): every variant whose recipe can): the served MPNet keeps its FFN output projections
    # fp32 in int8-calibrated only, where its answers need it (docs/model.md).
    float_layer_variants: Sequence[Variant | str] = ()

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = default_variants(self.calibration_data)
        try:
            self.variants = tuple(Variant(v) for v in self.variants)
            self.float_layer_variants = tuple(Variant(v) for v in self.float_layer_variants)
        except ValueError as exc:
            raise BuildError(f"unknown variant: {exc}; choose from {', '.join(Variant)}") from exc

    def keeps_float(self, variant: Variant | str) -> bool:
        """Whether `variant` keeps the `float_layers` in float."""
        v = Variant(variant)
        return RECIPES[v].honours_float_layers and (not self.float_layer_variants or v in self.float_layer_variants)

    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, columns) shape the build verifies: 1..batch_size rows x each bucket up to seq_len."""
        buckets = sorted({b for b in self.seq_buckets if 8 <= b < self.seq_len} | {self.seq_len})
        return [(rows, cols) for cols in buckets for rows in range(1, self.batch_size + 1)]


@dataclass
class BuiltVariant:
    """One verified module, ready to save."""

    variant: Variant
    module: Any  # a torch.jit.ScriptModule, or an openvino_build.OpenVINOModule (called the same way)
    op_counts: dict[str, int]
    parity: dict[str, Any]
    qconfig: dict[str, Any] | None
    int8: Int8Scheme | None
    logits: list[torch.Tensor] = field(default_factory=list)
    shape_parity: dict[str, Any] = field(default_factory=dict)
    batch_invariance: BatchInvariance | None = None
    activation_ranges: list[ActivationRange] = field(default_factory=list)


# ---- pure steps -------------------------------------------------------------------------------------------


def trace(model: torch.nn.Module, example: PaddedBatch) -> torch.jit.ScriptModule:
    """torch.jit.trace with the model's inputs in its forward signature's order (the example's spec)."""
    with torch.no_grad(), deprecations_silenced(tracing=True):
        return torch.jit.trace(model, example.args())


def quantize_int8(
    traced: torch.jit.ScriptModule,
    *,
    debug: bool = False,
    two_step: bool = False,
    weight_bits: int = 8,
    float_layers: Sequence[str] = (),
) -> torch.jit.ScriptModule:
    """Graph-mode dynamic quantization of every Linear, per-channel int8 weights (the tutorial's recipe), but for
    `float_layers` (module names), which stay fp32.

    weight_bits 7 narrows the per-channel symmetric range to -63..63 (the qint8 dtype would still allow 64 after
    rounding with -64..63), so u8 x s8 pair sums fit int16 on fbgemm's AVX2 kernels.
    """
    from torch.ao.quantization import (
        PerChannelMinMaxObserver,
        QConfig,
        convert_dynamic_jit,
        per_channel_dynamic_qconfig,
        prepare_dynamic_jit,
        quantize_dynamic_jit,
    )

    qconfig = per_channel_dynamic_qconfig
    if weight_bits != 8:
        limit = (1 << (weight_bits - 1)) - 1
        weight = PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-limit, quant_max=limit
        )
        qconfig = QConfig(activation=per_channel_dynamic_qconfig.activation, weight=weight)
    qconfig_dict: dict[str, Any] = {"": qconfig, **{name: None for name in float_layers}}
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
    """Node kinds of a TorchScript module's inlined graph, most frequent first."""
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
    enc = ckpt.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=encoder.max_length)
    for i, (row, want) in enumerate(zip(encoder.encode(pairs), [row_of(e) for e in enc.encodings], strict=True)):
        if (row.input_ids, row.token_type_ids, row.sentence_tokens) != (want.input_ids, want.token_type_ids, want.sentence_tokens):
            raise VerificationError(
                f"tokenizer check failed: the saved tokenizer.json encodes parity pair {i} differently from the checkpoint's tokenizer"
            )


def check_ops(variant: str, counts: dict[str, int], linears: tuple[int, int], linear_op: str | None, float_layers: int = 0) -> None:
    """Every Linear became `linear_op` but the `float_layers` kept in float: int8 graphs hold one int8 Linear op per
    quantized Linear, one float Linear per kept one, and no other; the debug graph quantizes every weight
    (aten::quantize_per_channel) and keeps float Linears."""
    if linear_op is None:
        return
    total, encoder = linears[0] - float_layers, linears[1] - float_layers
    found = counts.get(linear_op, 0)
    others = {op: counts.get(op, 0) for op in ("aten::linear", DYNAMIC_OP, FIXED_RANGE_OP) if op != linear_op}
    if linear_op == "aten::quantize_per_channel":
        others = {}
    elif float_layers:
        others["aten::linear"] -= float_layers
    if found < encoder or found != total or any(others.values()):
        extra = "".join(f", {n} {op}" for op, n in others.items())
        raise VerificationError(
            f"op check failed for {variant}: {found} {linear_op} ops{extra} for {total} Linear layers ({encoder} in the encoder)"
        )


def check_weight_bits(variant: str, module: torch.jit.ScriptModule, bits: int) -> None:
    """Every packed int8 weight fits `bits` (symmetric): what makes a 7-bit-weight artifact exact on AVX2 kernels."""
    limit = 1 << (bits - 1)
    for name, value in calibration.packed_params(module):
        weight, _ = torch.ops.quantized.linear_unpack(value)
        q = weight.int_repr()
        if int(q.abs().max()) > limit:
            raise VerificationError(
                f"weight check failed for {variant}: {name} holds int8 values up to {int(q.abs().max())}, beyond {bits} bits"
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


def shape_batches(rows: Sequence[EncodedPair], shapes: Sequence[tuple[int, int]], spec: InputSpec) -> dict[tuple[int, int], ShapedBatch]:
    """One batch per shape: parity rows that fit its columns (cycled), padded to exactly rows x columns."""
    batches = {}
    for n_rows, cols in shapes:
        fitting = [i for i, row in enumerate(rows) if len(row) <= cols]
        if not fitting:
            raise BuildError(f"no parity pair fits {cols} tokens; use larger --seq-buckets")
        ids = tuple(fitting[i % len(fitting)] for i in range(n_rows))
        batches[(n_rows, cols)] = ShapedBatch(pad_batch([rows[i] for i in ids], n_rows, cols, spec), ids)
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
    module: Any,
    rows: Sequence[EncodedPair],
    shaped: dict[tuple[int, int], ShapedBatch],
    at: dict[tuple[int, int], torch.Tensor],
    *,
    required: bool,
    tolerance: float = INVARIANCE_TOLERANCE,
) -> BatchInvariance:
    """How far a row's logits move between running alone at its own length and inside each verified batch shape.

    Measured for every variant; for `required` ones (fp32, int8-calibrated; openvino-int8 with its own tolerance)
    beyond `tolerance` fails the build. The runtime pads by length buckets by default only for artifacts that passed.
    """
    spec = next(iter(shaped.values())).batch.spec
    alone = run(module, [pad_batch([row], 1, len(row), spec) for row in rows])
    worst = max(float((at[shape][j] - alone[i][0]).abs().max()) for shape, item in shaped.items() for j, i in enumerate(item.row_ids))
    if required and not worst <= tolerance:
        raise VerificationError(
            f"batch-invariance check failed for {variant}: a row's logits move by {worst:.4g} between batch shapes (allowed {tolerance:g})"
        )
    return BatchInvariance(batch_invariant=required, max_abs_logit_diff=worst, tolerance=tolerance, shapes=len(shaped))


def calibrate(ckpt: Checkpoint, encoder: PairEncoder, layers: Sequence[str], opts: BuildOptions) -> list[ActivationRange]:
    """Activation ranges of every Linear over MRPC train pairs (for int8-calibrated)."""
    try:
        # The build runs what it makes (parity, invariance): only widths this host's kernel computes exactly can be
        # verified here. The default 7-bit weights can be, on every x86-64 CPU.
        require_fixed_range_kernel(opts.activation_bits, opts.weight_bits)
    except KernelUnsupported as exc:
        raise BuildError(f"cannot verify int8-calibrated at these widths on this host: {exc}") from exc
    assert opts.calibration_data is not None
    rows = calibration.calibration_rows(opts.calibration_data, encoder, opts.calibration_pairs)
    observed = calibration.observe_ranges(ckpt.model, rows, layers, ckpt.spec)
    return calibration.activation_ranges(observed, layers, opts.activation_bits)


def check_reload(reloaded: Any, path: Path, batches: Sequence[PaddedBatch], expected: Sequence[torch.Tensor]) -> None:
    """The saved file, loaded back, must give the same logits as the module that was saved."""
    got = run(reloaded, batches)
    if not all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(expected, got, strict=False)):
        raise VerificationError(f"reload check failed: {path} gives different logits once saved and loaded back")


# ---- the recipes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """What every recipe may start from: the eager model, its trace, an example batch, the options, the calibration
    rows (MRPC train pairs) and the activation ranges observed on them."""

    model: torch.nn.Module
    traced: torch.jit.ScriptModule
    example: PaddedBatch
    opts: BuildOptions
    ranges: Sequence[ActivationRange]
    calibration_rows: Sequence[EncodedPair] = ()
    float_layers: tuple[str, ...] = ()  # Linears the int8 recipes that honour it keep in float


PER_CHANNEL = {
    "api": "torch.ao.quantization.quantize_dynamic_jit",
    "qconfig": "per_channel_dynamic_qconfig",
    "weight": "int8, per-channel affine (PerChannelMinMaxObserver)",
    "activation": "quint8, dynamic per-tensor scale at run time",
}


@dataclass(frozen=True)
class Verifying:
    """What a recipe's own checks see: the variant made, the build's inputs and its Linear count."""

    variant: Variant
    module: Any
    scheme: Int8Scheme | None
    linears: tuple[int, int]
    ckpt: Checkpoint
    opts: BuildOptions
    encoder: PairEncoder | None
    columns: list[int]


Check = Callable[[Verifying], tuple[str, Any] | None]  # a report entry for the manifest's parity, or None


@dataclass(frozen=True)
class Recipe:
    """How one variant is made, what it must pass, and which engine runs it: one entry of RECIPES per variant."""

    make: Callable[[Stage], Any]
    qconfig: Callable[[BuildOptions], dict[str, Any] | None]
    int8: Callable[[BuildOptions], Int8Scheme | None]
    linear_op: str | None  # what every nn.Linear must have become (check_ops); None: the recipe's checks say
    checks: tuple[Check, ...] = ()
    reference: str = "traced"  # what its logits are compared with: the traced fp32 model, or (fp32 itself) the eager one
    honours_float_layers: bool = False  # keeps BuildOptions.float_layers in float
    batch_invariant: bool = False  # must pass check_batch_invariance
    needs_calibration: bool = False
    engine: str = TORCHSCRIPT
    invariance_tolerance: float = INVARIANCE_TOLERANCE


@dataclass(frozen=True)
class Writer:
    """How the build saves, reloads and inspects a module of one engine, and whether it can build for it here."""

    save: Callable[[Any, Path], tuple[Path, dict[str, fmt.FileDigest]]]
    reload: Callable[[Path], Any]
    op_counts: Callable[[Any], dict[str, int]]
    require: Callable[[], None]
    details: Callable[[], dict[str, Any]]  # recorded beside the qconfig (the quantized engine, OpenVINO's version)


def _save_torchscript(module: Any, folder: Path) -> tuple[Path, dict[str, fmt.FileDigest]]:
    save_module(module, folder / fmt.MODEL_FILE)
    return folder / fmt.MODEL_FILE, {}


WRITERS: dict[str, Writer] = {
    TORCHSCRIPT: Writer(
        _save_torchscript,
        load_module,
        op_counts,
        lambda: None,
        lambda: {"engine": torch.backends.quantized.engine},
    ),
    OPENVINO: Writer(
        lambda module, folder: module.save(folder),
        openvino_build.OpenVINOModule.load,
        lambda module: module.op_counts(),
        openvino_build.require_buildable,
        lambda: {},
    ),
}


def _weight_bits(v: Verifying) -> tuple[str, Any] | None:
    if v.scheme is not None:
        check_weight_bits(v.variant, v.module, v.scheme.weight_bits)
    return None


def _int8_matmuls(v: Verifying) -> tuple[str, Any]:
    kept = len(v.scheme.float_layers) if v.scheme is not None else 0
    return "int8_matmuls", openvino_build.check_int8_matmuls(v.module, (v.linears[0], v.linears[1] - kept))


def _label_stability(v: Verifying) -> tuple[str, Any] | None:
    if v.encoder is None or v.opts.calibration_data is None:
        return None
    stability = openvino_build.check_label_stability(
        v.module, v.encoder, v.ckpt.spec, v.opts.calibration_data, v.columns, v.opts.batch_size, v.opts.seq_len
    )
    return "label_stability", stability


def _eager_int8(stage: Stage) -> torch.jit.ScriptModule:
    return quantize_eager_int8(stage.model, stage.example)


def _calibrated(stage: Stage) -> torch.jit.ScriptModule:
    opts = stage.opts
    quantized = quantize_int8(stage.traced, two_step=opts.two_step, weight_bits=opts.weight_bits, float_layers=stage.float_layers)
    return calibration.fix_activation_ranges(quantized, stage.ranges)


def _calibrated_qconfig(opts: BuildOptions) -> dict[str, Any]:
    return dict(
        PER_CHANNEL,
        weight=f"int8 storage, {opts.weight_bits}-bit values, per-channel symmetric (PerChannelMinMaxObserver)",
        activation=f"quint8 per-tensor, {opts.activation_bits}-bit, range fixed in the graph: min/max of the fp32 "
        f"input of each Linear over {opts.calibration_pairs} MRPC train pairs (seeded sample)",
        activation_bits=opts.activation_bits,
        weight_bits=opts.weight_bits,
        op=FIXED_RANGE_OP,
        two_step=opts.two_step,
    )


RECIPES: dict[Variant, Recipe] = {
    Variant.FP32: Recipe(lambda st: st.traced, lambda _: None, lambda _: None, None, reference="eager", batch_invariant=True),
    Variant.INT8: Recipe(
        lambda st: quantize_int8(st.traced, two_step=st.opts.two_step, float_layers=st.float_layers),
        lambda o: dict(PER_CHANNEL, debug=False, two_step=o.two_step),
        lambda _: Int8Scheme(weight_bits=8, activation_bits=None),
        DYNAMIC_OP,
        honours_float_layers=True,
    ),
    Variant.DEBUG: Recipe(
        lambda st: quantize_int8(st.traced, debug=True, two_step=st.opts.two_step),
        lambda o: dict(PER_CHANNEL, debug=True, two_step=o.two_step),
        lambda _: Int8Scheme(weight_bits=8, activation_bits=None),
        "aten::quantize_per_channel",
    ),
    Variant.EAGER_INT8: Recipe(
        _eager_int8,
        lambda _: {"api": "torch.ao.quantization.quantize_dynamic", "modules": ["torch.nn.Linear"], "weight": "int8, per-tensor"},
        lambda _: Int8Scheme(weight_bits=8, activation_bits=None),
        DYNAMIC_OP,
    ),
    Variant.INT8_CALIBRATED: Recipe(
        _calibrated,
        _calibrated_qconfig,
        lambda o: Int8Scheme(weight_bits=o.weight_bits, activation_bits=o.activation_bits),
        FIXED_RANGE_OP,
        checks=(_weight_bits,),
        batch_invariant=True,
        needs_calibration=True,
        honours_float_layers=True,
    ),
    Variant.OPENVINO_INT8: Recipe(
        lambda st: openvino_build.quantize(st.model, st.example, st.calibration_rows, st.float_layers),
        lambda o: openvino_build.qconfig(o.calibration_pairs),
        lambda _: Int8Scheme(weight_bits=8, activation_bits=8),
        None,
        checks=(_int8_matmuls, _label_stability),
        batch_invariant=True,
        needs_calibration=True,
        honours_float_layers=True,
        engine=OPENVINO,
        invariance_tolerance=openvino_build.OPENVINO_SHAPE_TOLERANCE,
    ),
}


# ---- the command ------------------------------------------------------------------------------------------


def build_variants(
    ckpt: Checkpoint,
    batches: Sequence[PaddedBatch],
    opts: BuildOptions,
    bar: Any,
    shaped: dict[tuple[int, int], ShapedBatch] | None = None,
    *,
    rows: Sequence[EncodedPair] = (),
    ranges: Sequence[ActivationRange] = (),
    calibration_rows: Sequence[EncodedPair] = (),
    encoder: PairEncoder | None = None,
    float_layers: tuple[str, ...] = (),
) -> list[BuiltVariant]:
    """Make and verify every requested variant (at every shape of `shaped`) from its recipe; nothing is written here.

    `rows` are the parity rows `shaped` was cut from (for the batch-invariance check); `ranges` the calibrated
    activation ranges int8-calibrated needs. fp32 is checked against the eager model, the others against fp32.
    """
    model = ckpt.model
    shaped = shaped or {}
    reference = run(model, batches)
    traced = trace(model, batches[0])
    traced_logits = run(traced, batches)
    check_parity("fp32 trace vs eager", compare(reference, traced_logits), TRACE_TOLERANCE)
    eager_at = {shape: run(model, [b.batch])[0] for shape, b in shaped.items()}
    traced_at = {shape: run(traced, [b.batch])[0] for shape, b in shaped.items()}
    bar.update(1)
    linears = count_linears(model)
    stage = Stage(model, traced, batches[0], opts, ranges, calibration_rows, float_layers)
    built: list[BuiltVariant] = []
    columns = sorted({c for _, c in shaped}) or [opts.seq_len]
    for variant in opts.variants:
        recipe = RECIPES[Variant(variant)]
        kept = float_layers if opts.keeps_float(variant) else ()
        module = recipe.make(replace(stage, float_layers=kept))
        eager = recipe.reference == "eager"
        logits = traced_logits if module is traced else run(module, batches)
        tolerance = TRACE_TOLERANCE if eager else opts.tolerance
        parity = dict(compare(reference if eager else traced_logits, logits), reference=f"{recipe.reference} fp32", tolerance=tolerance)
        counts = WRITERS[recipe.engine].op_counts(module)
        check_ops(variant, counts, linears, recipe.linear_op, len(kept))
        scheme = recipe.int8(opts)
        if scheme is not None and kept:
            scheme = scheme.model_copy(update={"float_layers": kept})
        verifying = Verifying(Variant(variant), module, scheme, linears, ckpt, opts, encoder, columns)
        check_parity(variant, parity, tolerance)
        at = traced_at if module is traced else {shape: run(module, [b.batch])[0] for shape, b in shaped.items()}
        shape_parity = check_shapes(variant, at, eager_at if eager else traced_at, tolerance)
        invariance = (
            check_batch_invariance(
                variant, module, rows, shaped, at, required=recipe.batch_invariant, tolerance=recipe.invariance_tolerance
            )
            if shaped
            else None
        )
        for check in recipe.checks:
            if (entry := check(verifying)) is not None:
                parity[entry[0]] = entry[1]
        parity["linear_layers"], parity["encoder_linear_layers"] = linears
        log.info("%s verified: %s", variant, {k: parity[k] for k in ("max_abs_logit_diff", "max_abs_score_diff", "argmax_agreement")})
        qconfig = recipe.qconfig(opts)
        if qconfig is not None:
            qconfig.update(WRITERS[recipe.engine].details())
        ranges_kept = list(ranges) if recipe.needs_calibration else []
        built.append(BuiltVariant(variant, module, counts, parity, qconfig, scheme, logits, shape_parity, invariance, ranges_kept))
        bar.update(1)
    return built


def build(model_dir: Path, out: Path, opts: BuildOptions | None = None) -> dict[Variant, Manifest]:
    """The whole build: returns each variant's manifest; `out` holds one folder per variant, or nothing on failure."""
    opts = opts or BuildOptions()
    for engine_name in {RECIPES[v].engine for v in opts.variants}:
        WRITERS[engine_name].require()
    if any(RECIPES[v].needs_calibration for v in opts.variants):
        if opts.calibration_data is None:
            raise BuildError("int8-calibrated needs MRPC train pairs to calibrate on: pass --calibration-data DIR")
        split_path(opts.calibration_data, "train")  # fail now, with the explanation of MRPC, not after tracing
        if opts.calibration_pairs < 1:
            raise BuildError(f"--calibration-pairs must be at least 1, not {opts.calibration_pairs}")
        if opts.weight_bits not in (7, 8):
            raise BuildError(f"weight bits must be 7 or 8, not {opts.weight_bits}")
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
        encoder = PairEncoder(tokenizer_dir / fmt.TOKENIZER_FILE, opts.seq_len)
        check_tokenizer(ckpt, encoder, PARITY_PAIRS)
        rows = encoder.encode(PARITY_PAIRS)
        spec = ckpt.spec
        batches = [
            pad_batch(rows[i : i + opts.batch_size], opts.batch_size, opts.seq_len, spec) for i in range(0, len(rows), opts.batch_size)
        ]
        rows = rows + short_rows(tokenizer_dir / fmt.TOKENIZER_FILE, rows, opts.shapes())
        shaped = shape_batches(rows, opts.shapes(), spec)
        layers = linear_execution_order(ckpt.model, batches[0])
        floats = tuple(name for name in layers if opts.float_layers and re.search(opts.float_layers, name))
        quantized = [name for name in layers if not (opts.keeps_float(Variant.INT8_CALIBRATED) and name in floats)]
        needs_ranges = any(v == Variant.INT8_CALIBRATED for v in opts.variants)
        ranges = calibrate(ckpt, encoder, quantized, opts) if needs_ranges else []
        train_rows: list[EncodedPair] = []
        if any(RECIPES[v].needs_calibration for v in opts.variants):
            assert opts.calibration_data is not None
            train_rows = calibration.calibration_rows(opts.calibration_data, encoder, opts.calibration_pairs)
        with progress(total=1 + 2 * len(opts.variants), desc="build", unit="step") as bar:
            built = build_variants(
                ckpt,
                batches,
                opts,
                bar,
                shaped,
                rows=rows,
                ranges=ranges,
                calibration_rows=train_rows,
                encoder=encoder,
                float_layers=floats,
            )
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
) -> Manifest:
    import transformers

    shutil.copytree(tokenizer_dir, folder)
    engine = RECIPES[item.variant].engine
    model_path, extra_files = WRITERS[engine].save(item.module, folder)
    check_reload(WRITERS[engine].reload(model_path), model_path, batches, item.logits)
    manifest = Manifest(
        format_version=fmt.FORMAT_VERSION,
        name=opts.name or ckpt.path.resolve().name,
        variant=item.variant,
        trace_shape=fmt.TraceShape(batch_size=opts.batch_size, seq_len=opts.seq_len),
        verified_shapes=tuple(opts.shapes()),
        shape_parity=item.shape_parity,
        batch_invariance=item.batch_invariance,
        activation_ranges=tuple(item.activation_ranges),
        input_names=ckpt.spec.names,
        labels=LABELS,
        model_file=model_path.name,
        model_sha256=fmt.sha256_file(model_path),
        model_bytes=model_path.stat().st_size,
        engine=engine,
        extra_files=extra_files,
        tokenizer=fmt.TokenizerInfo(
            file=fmt.TOKENIZER_FILE,
            sha256=fmt.sha256_file(folder / fmt.TOKENIZER_FILE),
            truncation="longest_first",
            max_length=opts.seq_len,
            pad_id=ckpt.spec.pad_id,
        ),
        int8=item.int8,
        qconfig=item.qconfig,
        attn_implementation=opts.attn_implementation,
        linear_layers=tuple(linear_layers),
        op_counts={k: v for k, v in item.op_counts.items() if any(w in k.lower() for w in ("linear", "quant", "matmul"))},
        parity=item.parity,
        source=fmt.Source(
            checkpoint=ckpt.path.resolve().name,
            config_sha256=ckpt.config_sha256,
            random_init=ckpt.random_init,
            family=ckpt.family.model_type,
        ),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        build_cpu=cpu_description(),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 2),
    )
    fmt.write_manifest(folder, manifest)
    return manifest
