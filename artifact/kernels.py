"""What an int8 artifact needs of the CPU it runs on, and what this CPU's int8 kernel path is.

fbgemm's int8 GEMM multiplies u8 activations by s8 weights. On VNNI CPUs (AVX-512 VNNI, AVX-VNNI) it accumulates in
int32 and is exact. Its AVX2 kernels add each pair of u8 x s8 products in saturating int16 first (fbgemm's reason
for `reduce_range`): exact only while 2 x (2^a - 1) x 2^(w-1) <= 32767 for a-bit activations and w-bit weights,
that is 8-bit activations with 7-bit weights (32,640) or 7-bit activations with 8-bit weights (32,512), not 8 x 8.
An artifact whose widths fit that bound gives the same int32 sums, hence the same scores, on both kernel paths.
`FBGEMM_ENABLE_INSTRUCTIONS=AVX2` makes fbgemm take its AVX2 kernels on any CPU (how tests cover both kinds).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch

from artifact.errors import KernelUnsupported
from artifact.quiet import deprecations_silenced

DYNAMIC_OP = "quantized::linear_dynamic"
FIXED_RANGE_OP = "quantized::linear_with_input_q_dq_qweight_dq_output_fp32"
# The fbgemm packed weights the fixed-range op reads; onednn and qnnpack repack int8 weights into types it rejects.
FIXED_RANGE_ENGINES = ("x86", "fbgemm")
INT16_MAX = 32767
SIMD_FLAGS = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile"}


def exact_on_saturating_kernels(activation_bits: int, weight_bits: int) -> bool:
    """Whether a pair of u8 x s8 products of these widths fits fbgemm's AVX2 int16 accumulator."""
    return 2 * ((1 << activation_bits) - 1) * (1 << (weight_bits - 1)) <= INT16_MAX


@functools.cache
def _exact_8x8(engine: str) -> bool:
    with deprecations_silenced():
        weight = torch.quantize_per_channel(torch.ones(2, 64), torch.full((2,), 1 / 127), torch.zeros(2, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(weight, None)
        out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(torch.ones(1, 64), 1 / 255, 0, packed)
    return bool(torch.allclose(out, torch.full_like(out, 64.0), atol=1e-3))


def int8_kernel_exact() -> bool:
    """Whether this process's int8 GEMM is exact at full 8-bit activations and weights (255 x 127 products).

    A saturating kernel turns this 64-long dot product of 1.0s into about 32. Probed once per quantized engine.
    """
    engine = torch.backends.quantized.engine
    return engine in FIXED_RANGE_ENGINES and _exact_8x8(engine)


def int8_kernel_path() -> str:
    """`vnni` (int32 accumulation, exact at 8 x 8 bits) or `avx2` (pairs summed in saturating int16)."""
    return "vnni" if int8_kernel_exact() else "avx2"


def cpu_description() -> dict[str, str]:
    """The CPU facts a measurement or a served answer depends on: model, SIMD flags, ATen's ISA, the int8 kernel path."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:  # noqa: PTH123 - a pseudo-file, read once
            for line in handle:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu_model": model or "unknown",
        "simd_flags": " ".join(sorted(flags & SIMD_FLAGS)),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "int8_kernel": int8_kernel_path(),
        "fbgemm_enable_instructions": os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", ""),
        "quantized_engine": torch.backends.quantized.engine,
    }


def require_fixed_range_kernel(activation_bits: int, weight_bits: int) -> None:
    """What a fixed-range (int8-calibrated) graph needs of this process: fbgemm-packed weights (the x86 or fbgemm
    engine) and, when its widths overflow int16 pair sums, an int8 GEMM that does not saturate (VNNI)."""
    engine = torch.backends.quantized.engine
    if engine not in FIXED_RANGE_ENGINES:
        raise KernelUnsupported(f"int8-calibrated runs on the {' or '.join(FIXED_RANGE_ENGINES)} quantized engine, not {engine}")
    if not exact_on_saturating_kernels(activation_bits, weight_bits) and not int8_kernel_exact():
        raise KernelUnsupported(
            f"this CPU's int8 kernel (AVX2, no VNNI) saturates {activation_bits}-bit activations x {weight_bits}-bit weights; "
            "rebuild int8-calibrated with the default 7-bit weights, which run exactly on every x86-64 CPU"
        )


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a container limited to 1 CPU gets 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def _cgroup_quota() -> float | None:
    """cpu.max (cgroup v2) or cfs_quota_us / cfs_period_us (v1), in CPUs; None when unlimited or unknown."""
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
