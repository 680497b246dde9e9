"""Fixed int8 activation ranges: calibrate them on MRPC train pairs and write them into a quantized graph.

Dynamic quantization picks each Linear's activation scale from the whole input tensor at run time, so an int8
score depends on which other pairs share the batch and on how far it is padded: on the default model, reshuffling
the dev pairs between 8x128 batches alone moves 12 of 408 labels. Here the graph-mode int8 model keeps its
per-channel int8 weights, and each `quantized::linear_dynamic` becomes
`quantized::linear_with_input_q_dq_qweight_dq_output_fp32` with a scale and zero point calibrated once: every
element is quantized by a constant, the int8 GEMM is exact, so a pair's logits no longer depend on its batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from artifact.encoding import EncodedPair, InputSpec, PairEncoder, pad_batch
from artifact.kernels import DYNAMIC_OP, FIXED_RANGE_OP
from artifact.manifest import ActivationRange
from artifact.quiet import round_trip
from model_build.errors import BuildError
from model_build.mrpc import load_split
from model_build.progress import progress

PACKED_WEIGHT_PREFIX = "_jit_pass_packed_weight_"


def calibration_rows(data_dir: Path, encoder: PairEncoder, pairs: int, seed: int = 0) -> list[EncodedPair]:
    """`pairs` pairs sampled (seeded) from MRPC train: never dev, which is what the variant is evaluated on."""
    train = load_split(data_dir, "train")
    sample = random.Random(seed).sample(train, min(pairs, len(train)))
    return encoder.encode([(p.sentence1, p.sentence2) for p in sample])


def observe_ranges(
    model: torch.nn.Module, rows: Sequence[EncodedPair], layers: Sequence[str], spec: InputSpec
) -> dict[str, tuple[float, float]]:
    """Min and max of every named Linear's fp32 input over `rows`, each run alone at its own length (no padding)."""
    modules = dict(model.named_modules())
    ranges = {name: (0.0, 0.0) for name in layers}  # quantized ranges always include 0

    def observer(name: str) -> Any:
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            lo, hi = torch.aminmax(args[0].detach())
            old = ranges[name]
            ranges[name] = (min(old[0], float(lo)), max(old[1], float(hi)))

        return hook

    hooks = [modules[name].register_forward_pre_hook(observer(name)) for name in layers]
    try:
        with torch.inference_mode(), progress(total=len(rows), desc="calibrate", unit="pair") as bar:
            for row in rows:
                model(*pad_batch([row], 1, len(row), spec).args())
                bar.update(1)
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def activation_ranges(ranges: dict[str, tuple[float, float]], layers: Sequence[str], bits: int) -> list[ActivationRange]:
    """quint8 qparams per layer: the full 0..255 for 8 bits, 0..127 for 7 (fbgemm's reduce_range)."""
    if bits not in (7, 8):
        raise BuildError(f"activation bits must be 7 or 8, not {bits}")
    out = []
    for name in layers:
        lo, hi = ranges[name]
        observer = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=(1 << bits) - 1)
        observer(torch.tensor([lo, hi]))
        scale, zero_point = observer.calculate_qparams()
        out.append(ActivationRange(layer=name, min=lo, max=hi, scale=float(scale), zero_point=int(zero_point)))
    return out


def fix_activation_ranges(quantized: torch.jit.ScriptModule, ranges: Sequence[ActivationRange]) -> torch.jit.ScriptModule:
    """A copy of a graph-mode int8 module whose Linears quantize their inputs with `ranges` (in packed-weight order)."""
    module = round_trip(quantized)
    graph = module.graph
    nodes = graph.findAllNodes(DYNAMIC_OP)
    if len(nodes) != len(ranges):
        raise BuildError(f"{len(nodes)} {DYNAMIC_OP} ops in the graph but {len(ranges)} calibrated Linear layers")
    for node in nodes:
        x, packed, _reduce_range = node.inputs()
        attr = packed.node().s("name") if packed.node().kind() == "prim::GetAttr" else ""
        _, prefix, index = attr.rpartition(PACKED_WEIGHT_PREFIX)
        if not prefix or not index.isdigit() or int(index) >= len(ranges):
            raise BuildError(f"unexpected int8 weight {attr or packed.node().kind()!r}: not a graph-mode packed weight")
        r = ranges[int(index)]
        with graph.insert_point_guard(node):
            scale, zero_point = graph.insertConstant(r.scale), graph.insertConstant(r.zero_point)
            fixed = graph.insertNode(graph.create(FIXED_RANGE_OP, [x, scale, zero_point, packed]))
        fixed.output().setType(node.output().type())
        node.output().replaceAllUsesWith(fixed.output())
        node.destroy()
    torch._C._jit_pass_dce(graph)
    return round_trip(module)  # so no executor state from before the rewrite survives


def packed_params(module: torch.jit.ScriptModule) -> Iterator[tuple[str, Any]]:
    """(qualified name, LinearPackedParams) for every packed weight that a module's own graph reads off `self`."""
    for prefix, sub in module.named_modules():
        try:
            graph = sub.graph
        except (AttributeError, RuntimeError):  # a submodule without forward
            continue
        this = next(graph.inputs())
        for node in graph.nodes():
            if (
                node.kind() == "prim::GetAttr"
                and next(node.inputs()) is this
                and str(node.output().type()).endswith("LinearPackedParamsBase")
            ):
                name = node.s("name")
                yield (f"{prefix}.{name}" if prefix else name), sub._c.getattr(name)
