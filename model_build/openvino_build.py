"""openvino-int8: the same checkpoint converted to OpenVINO and quantized by NNCF's post-training quantization on
MRPC **train** pairs (the transformer preset), verified like the TorchScript variants, plus a check of its own:
labels must not move between batch shapes on MRPC dev and train.

Why a second engine: the forward is the product's speed (the service costs ~nothing around it), and OpenVINO's int8
measured 1.25-1.8x faster than the TorchScript int8-calibrated forward on full batches (docs/performance.md). Its
activations are quantized with fixed, calibrated ranges, like int8-calibrated's, but its float ops and kernels are
OpenVINO's: a pair's score moves by about 1e-3 between batch shapes (int8-calibrated: exactly 0), so the build
measures that and refuses the artifact if any label of dev or train moves.

openvino runs the artifact; nncf only builds it (the `build` extra, not in the runtime image).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifact.encoding import EncodedPair, InputSpec, PaddedBatch, PairEncoder, pad_batch, paraphrase_scores
from artifact.engines.openvino import PRECISION as OPENVINO_PRECISION
from artifact.engines.openvino import OpenVINOEngine
from artifact.manifest import OPENVINO_MODEL_FILE, OPENVINO_WEIGHTS_FILE, FileDigest, file_digest
from artifact.quiet import deprecations_silenced
from model_build.errors import BuildError, VerificationError
from model_build.mrpc import load_split
from model_build.progress import progress

log = logging.getLogger(__name__)

# Labels compared between each pair alone (1 row, its own length bucket) and inside full 8 x trace-length batches.
STABILITY_SPLITS = ("dev", "train")
# A row's logits alone vs inside a batch: fixed-range int8 with OpenVINO's float kernels; measured up to ~0.01 logits.
OPENVINO_SHAPE_TOLERANCE = 0.05


def available() -> str | None:
    """None when openvino-int8 can be built here, else why not."""
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install '.[openvino,build]')" if missing else None


@dataclass
class OpenVINOModule:
    """An OpenVINO model called like the traced module: its inputs in the model's order -> (logits,).
    It runs on the service's own engine (one stream, one thread), so the build verifies what the runtime runs."""

    model: Any  # openvino.Model, saved by `save`
    engine: OpenVINOEngine

    @classmethod
    def compile(cls, model: Any) -> OpenVINOModule:
        return cls(model, OpenVINOEngine(model))

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor]:
        names = [port.get_any_name() for port in self.model.inputs]
        return (self.engine.forward(dict(zip(names, args, strict=True))),)

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.get_type_name() for op in self.model.get_ops()).most_common())

    def save(self, folder: Path) -> tuple[Path, dict[str, FileDigest]]:
        """model.xml + model.bin (fp32 stays fp32: no fp16 compression of the float weights)."""
        import openvino as ov

        ov.save_model(self.model, str(folder / OPENVINO_MODEL_FILE), compress_to_fp16=False)
        return folder / OPENVINO_MODEL_FILE, {OPENVINO_WEIGHTS_FILE: file_digest(folder / OPENVINO_WEIGHTS_FILE)}

    @staticmethod
    def load(path: Path) -> OpenVINOModule:
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return OpenVINOModule.compile(model)


def _inputs(batch: PaddedBatch) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in batch.kwargs().items()}


def convert(model: torch.nn.Module, example: PaddedBatch) -> Any:
    """The eager checkpoint as an OpenVINO model with dynamic batch and sequence dimensions, inputs named as traced."""
    import openvino as ov

    with torch.no_grad(), deprecations_silenced(tracing=True):  # the converter traces, with the tracer's notices
        converted = ov.convert_model(model, example_input=example.kwargs())
    converted.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in converted.inputs})
    return converted


def quantize(model: torch.nn.Module, example: PaddedBatch, rows: Sequence[EncodedPair], float_layers: Sequence[str] = ()) -> OpenVINOModule:
    """NNCF post-training quantization (transformer preset) calibrated on `rows`, each at its own length; the
    Linears named in `float_layers` stay floating point (their MatMuls are left out of NNCF's scope)."""
    import nncf

    ov_model = convert(model, example)
    dataset = nncf.Dataset(list(rows), lambda row: _inputs(pad_batch([row], 1, len(row), example.spec)))
    ignored = nncf.IgnoredScope(patterns=[f".*{re.escape(name)}/.*" for name in float_layers], validate=False) if float_layers else None
    quantized = nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(rows), ignored_scope=ignored)
    return OpenVINOModule.compile(quantized)


def check_int8_matmuls(module: OpenVINOModule, linears: tuple[int, int]) -> dict[str, int]:
    """Every encoder Linear became an int8 MatMul: its activation input comes through a FakeQuantize, and its weight
    is a quantized constant. NNCF's transformer preset leaves attention's activation x activation products float."""
    total, encoder = linears
    quantized = 0
    for op in module.model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        sources = [op.input_value(i).get_node() for i in range(2)]
        if sources[0].get_type_name() == "FakeQuantize" and _is_quantized_weight(sources[1]):
            quantized += 1
    counts = module.op_counts()
    if quantized < encoder:
        raise VerificationError(
            f"op check failed for openvino-int8: {quantized} int8 MatMuls (FakeQuantize input, quantized weight) "
            f"for {encoder} encoder Linear layers of {total}"
        )
    return {"int8_matmuls": quantized, "FakeQuantize": counts.get("FakeQuantize", 0), "MatMul": counts.get("MatMul", 0)}


def _is_quantized_weight(node: Any) -> bool:
    """A weight the int8 kernels read: a FakeQuantize of a constant, or a low-precision constant converted back."""
    seen = 0
    while seen < 6:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return node.input_value(0).get_node().get_type_name() in ("Constant", "Convert", "Multiply", "Subtract")
        if kind == "Constant":
            return str(node.get_element_type()) in ("<Type: 'int8_t'>", "<Type: 'uint8_t'>", "i8", "u8")
        if kind not in ("Convert", "Multiply", "Subtract", "Transpose", "Reshape"):
            return False
        node = node.input_value(0).get_node()
        seen += 1
    return False


def check_label_stability(
    module: OpenVINOModule,
    encoder: PairEncoder,
    spec: InputSpec,
    data_dir: Path,
    columns: Sequence[int],
    batch_size: int,
    seq_len: int,
) -> dict[str, Any]:
    """Each pair of MRPC dev and train scored alone (1 row at its own length bucket) and in file order inside full
    batch_size x seq_len batches: the labels must be the same; the largest score difference is recorded."""
    labels_moved, worst, pairs = 0, 0.0, 0
    buckets = sorted(columns)
    for split in STABILITY_SPLITS:
        rows = encoder.encode([(p.sentence1, p.sentence2) for p in load_split(data_dir, split)])
        pairs += len(rows)
        batched: list[float] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            (logits,) = module(*pad_batch(chunk, batch_size, seq_len, spec).args())
            batched += paraphrase_scores(logits[: len(chunk)])
        for i, row in progress(iterable=list(enumerate(rows)), desc=f"label stability ({split})", unit="pair", leave=False):
            cols = next(c for c in buckets if c >= len(row))
            (logits,) = module(*pad_batch([row], 1, cols, spec).args())
            alone = paraphrase_scores(logits)[0]
            worst = max(worst, abs(alone - batched[i]))
            labels_moved += (alone >= 0.5) != (batched[i] >= 0.5)
    report = {"splits": list(STABILITY_SPLITS), "pairs": pairs, "labels_moved": labels_moved, "max_abs_score_diff": worst}
    if labels_moved:
        raise VerificationError(
            f"label-stability check failed for openvino-int8: {labels_moved} of {pairs} MRPC {'/'.join(STABILITY_SPLITS)} labels "
            f"differ between a pair alone and inside {batch_size}x{seq_len} batches (max score difference {worst:.4g})"
        )
    log.info("openvino-int8 label stability: %s", report)
    return report


def qconfig(calibration_pairs: int) -> dict[str, Any]:
    import nncf
    import openvino as ov

    return {
        "api": "nncf.quantize (post-training)",
        "model_type": "transformer",
        "subset_size": calibration_pairs,
        "calibration": f"{calibration_pairs} MRPC train pairs (seeded sample), each at its own length",
        "precision_hint": OPENVINO_PRECISION,
        "openvino": ov.__version__,
        "nncf": nncf.__version__,
    }


def require_buildable() -> None:
    why = available()
    if why is not None:
        raise BuildError(f"cannot build openvino-int8 here: {why}")
