"""Describe an artifact: manifest, op counts, size, sha256 re-check, and int8 weight scales per layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from artifact.engines import OPENVINO
from artifact.manifest import Variant, verify_artifact
from artifact.quiet import load_module
from model_build import calibration
from model_build.build import op_counts
from model_build.openvino_build import OpenVINOModule


def weight_summaries(module: torch.jit.ScriptModule, layer_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per packed int8 Linear: weight shape, scheme, and the range of its per-channel scales and zero points.

    Graph-mode quantization hoists every packed weight onto the root as `_jit_pass_packed_weight_N` in execution
    order; `layer_names` (recorded by the build in the same order) gives them back their model names.
    """
    packed = list(calibration.packed_params(module))
    if layer_names and len(layer_names) == len(packed) and all("_jit_pass_packed_weight" in n for n, _ in packed):
        packed = [(layer, value) for layer, (_, value) in zip(layer_names, packed, strict=True)]
    rows = []
    for name, value in packed:
        weight, bias = torch.ops.quantized.linear_unpack(value)
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zero_points = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        else:
            scales, zero_points = torch.tensor([weight.q_scale()]), torch.tensor([weight.q_zero_point()])
        rows.append(
            {
                "layer": name,
                "shape": list(weight.shape),
                "dtype": str(weight.dtype).removeprefix("torch."),
                "qscheme": str(weight.qscheme()).removeprefix("torch."),
                "scale_min": float(scales.min()),
                "scale_max": float(scales.max()),
                "zero_points": sorted({int(z) for z in zero_points.tolist()}),
                "bias": bias is not None,
            }
        )
    return rows


def inspect(artifact_dir: Path) -> dict[str, Any]:
    """Verify the artifact's sha256 and return what `inspect` prints."""
    manifest = verify_artifact(artifact_dir)
    if manifest.engine == OPENVINO:
        module = OpenVINOModule.load(artifact_dir / manifest.model_file)
        weights: list[dict[str, Any]] = []
    else:
        module = load_module(artifact_dir / manifest.model_file)
        weights = weight_summaries(module, list(manifest.linear_layers)) if manifest.variant != Variant.FP32 else []
    return {
        "artifact": str(artifact_dir),
        "sha256_verified": True,
        "model_bytes": manifest.size_bytes,
        "manifest": manifest.to_json(),
        "op_counts": op_counts(module),
        "int8_weights": weights,
    }


def render(report: dict[str, Any]) -> str:
    """Human-readable text for the inspect command."""
    manifest = report["manifest"]
    lines = [
        f"artifact     {report['artifact']}",
        f"variant      {manifest['variant']}  ({manifest['name']})",
        f"model        {manifest['model_file']} on {manifest['engine']}, {report['model_bytes'] / 1e6:.1f} MB, "
        f"sha256 {manifest['model_sha256']} (verified)",
        f"trace shape  {manifest['trace_shape']['batch_size']}x{manifest['trace_shape']['seq_len']}",
        "",
        "ops (inlined graph):",
    ]
    interesting = {
        k: v
        for k, v in report["op_counts"].items()
        if any(s in k.lower() for s in ("linear", "quant", "matmul", "softmax", "layer_norm", "normalize", "gelu"))
    }
    lines += [f"  {count:6d}  {kind}" for kind, count in interesting.items()]
    if report["int8_weights"]:
        lines += [
            "",
            "int8 weights (per layer):",
            f"  {'layer':60s} {'shape':>12s} {'qscheme':22s} {'scale min':>10s} {'scale max':>10s} zero points",
        ]
        for row in report["int8_weights"]:
            shape = "x".join(map(str, row["shape"]))
            zps = ",".join(map(str, row["zero_points"][:4])) + ("..." if len(row["zero_points"]) > 4 else "")
            lines.append(f"  {row['layer']:60s} {shape:>12s} {row['qscheme']:22s} {row['scale_min']:10.3g} {row['scale_max']:10.3g} {zps}")
    if manifest.get("activation_ranges"):
        lines += ["", "fixed int8 activation ranges (calibrated):", f"  {'layer':60s} {'min':>9s} {'max':>9s} {'scale':>10s} zero point"]
        lines += [
            f"  {r['layer']:60s} {r['min']:9.3f} {r['max']:9.3f} {r['scale']:10.4g} {r['zero_point']}"
            for r in manifest["activation_ranges"]
        ]
    invariance = manifest.get("batch_invariance") or {}
    if invariance:
        lines += [
            "",
            f"batch-invariant: {invariance['batch_invariant']} (a row's logits alone vs in {invariance['shapes']} batch shapes: "
            f"max |difference| {invariance['max_abs_logit_diff']:.3g}, allowed {invariance['tolerance']:g})",
        ]
    lines += ["", "manifest:", json.dumps(manifest, indent=2, sort_keys=True)]
    return "\n".join(lines)
