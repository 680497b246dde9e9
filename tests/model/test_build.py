from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from artifact import manifest as artifact
from artifact.encoding import PairEncoder, pad_batch
from artifact.kernels import FIXED_RANGE_OP
from artifact.quiet import deprecations_silenced
from model_build.build import BuildOptions, build_variants, count_linears, op_counts, quantize_int8, run, trace
from model_build.checkpoint import load_for_tracing
from model_build.cli import main
from model_build.errors import BuildError
from model_build.parity_pairs import PARITY_PAIRS

TINY_LINEARS = 2 * 6 + 2  # 6 per encoder layer, plus pooler and classifier


def _batches(ckpt, tmp_path: Path):
    ckpt.tokenizer.save_pretrained(str(tmp_path / "tok"))
    encoder = PairEncoder(tmp_path / "tok" / "tokenizer.json", 128)
    rows = encoder.encode(PARITY_PAIRS)
    return [pad_batch(rows[i : i + 8], 8, 128, ckpt.spec) for i in range(0, len(rows), 8)]


def test_all_variants_are_written_with_a_manifest_that_matches(tiny_artifacts: Path):
    names = ["debug", "eager-int8", "fp32", "int8", "int8-calibrated", "openvino-int8"]  # setup.sh installs the build extra
    assert sorted(p.name for p in tiny_artifacts.iterdir()) == names
    for folder in tiny_artifacts.iterdir():
        manifest = json.loads((folder / "manifest.json").read_text())
        model = folder / manifest["model_file"]
        assert manifest["model_file"] == ("model.xml" if folder.name == "openvino-int8" else "model.pt")
        assert manifest["model_sha256"] == artifact.sha256_file(model)
        assert manifest["model_bytes"] == model.stat().st_size
        assert manifest["variant"] == folder.name
        assert manifest["trace_shape"] == {"batch_size": 8, "seq_len": 128}
        assert manifest["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert manifest["labels"] == ["not_paraphrase", "paraphrase"]
        assert manifest["torch_version"] == torch.__version__
        assert len(manifest["source"]["config_sha256"]) == 64
        assert (folder / "tokenizer.json").is_file()
        assert manifest["parity"]["pairs"] == len(PARITY_PAIRS)


def test_int8_graph_has_one_dynamic_quantized_linear_per_linear_layer(tiny_artifacts: Path, tiny_checkpoint: Path):
    ckpt = load_for_tracing(tiny_checkpoint)
    assert count_linears(ckpt.model) == (TINY_LINEARS, 12)
    for variant in ("int8", "eager-int8"):
        with deprecations_silenced():
            module = torch.jit.load(str(tiny_artifacts / variant / "model.pt"))
        counts = op_counts(module)
        assert counts["quantized::linear_dynamic"] == TINY_LINEARS
        assert "aten::linear" not in counts
    with deprecations_silenced():
        fp32 = torch.jit.load(str(tiny_artifacts / "fp32" / "model.pt"))
    assert "quantized::linear_dynamic" not in op_counts(fp32)
    manifest = json.loads((tiny_artifacts / "debug" / "manifest.json").read_text())
    assert manifest["op_counts"]["aten::quantize_per_channel"] == TINY_LINEARS
    with deprecations_silenced():
        calibrated = op_counts(torch.jit.load(str(tiny_artifacts / "int8-calibrated" / "model.pt")))
    assert calibrated[FIXED_RANGE_OP] == TINY_LINEARS
    assert "quantized::linear_dynamic" not in calibrated and "aten::linear" not in calibrated


def test_int8_calibrated_records_its_ranges_and_passes_the_invariance_check(tiny_artifacts: Path):
    manifest = json.loads((tiny_artifacts / "int8-calibrated" / "manifest.json").read_text())
    ranges = manifest["activation_ranges"]
    assert [r["layer"] for r in ranges] == manifest["linear_layers"]
    assert all(r["min"] <= 0 <= r["max"] and r["max"] > r["min"] and 0 <= r["zero_point"] <= 255 for r in ranges)
    assert manifest["qconfig"]["activation_bits"] == 8 and manifest["qconfig"]["op"] == FIXED_RANGE_OP
    for variant, invariant in (("fp32", True), ("int8-calibrated", True), ("int8", False)):
        check = json.loads((tiny_artifacts / variant / "manifest.json").read_text())["batch_invariance"]
        assert check["batch_invariant"] is invariant and check["shapes"] == 64
        assert (check["max_abs_logit_diff"] <= check["tolerance"]) is invariant, (variant, check)


def test_activation_qparams_span_the_calibrated_range():
    from model_build.calibration import activation_ranges

    ranges = {"a": (-1.0, 3.0)}
    eight, seven = activation_ranges(ranges, ["a"], 8)[0], activation_ranges(ranges, ["a"], 7)[0]
    assert eight.scale == pytest.approx(4 / 255, rel=1e-5) and eight.zero_point == 64
    assert seven.scale == pytest.approx(4 / 127, rel=1e-5) and seven.zero_point == 32
    with pytest.raises(BuildError, match="activation bits must be 7 or 8"):
        activation_ranges(ranges, ["a"], 4)


def test_the_int8_kernel_probe_tells_vnni_from_avx2():
    from artifact.kernels import int8_kernel_exact

    flags = Path("/proc/cpuinfo").read_text().split()
    vnni = ("avx512_vnni" in flags or "avx_vnni" in flags) and os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper() != "AVX2"
    assert int8_kernel_exact() is vnni


def test_fixing_ranges_needs_one_range_per_linear(tiny_checkpoint: Path, tmp_path: Path):
    from artifact.manifest import ActivationRange
    from model_build.calibration import fix_activation_ranges

    ckpt = load_for_tracing(tiny_checkpoint)
    module = quantize_int8(trace(ckpt.model, _batches(ckpt, tmp_path)[0]))
    with pytest.raises(BuildError, match=f"{TINY_LINEARS} quantized::linear_dynamic ops in the graph but 1 calibrated"):
        fix_activation_ranges(module, [ActivationRange(layer="x", min=-1.0, max=1.0, scale=0.01, zero_point=128)])


def test_saved_artifacts_reload_and_reproduce_the_eager_model(tiny_artifacts: Path, tiny_checkpoint: Path, tmp_path: Path):
    ckpt = load_for_tracing(tiny_checkpoint)
    batches = _batches(ckpt, tmp_path)
    eager = torch.cat(run(ckpt.model, batches))
    with deprecations_silenced():
        fp32 = torch.cat(run(torch.jit.load(str(tiny_artifacts / "fp32" / "model.pt")), batches))
        int8 = torch.cat(run(torch.jit.load(str(tiny_artifacts / "int8" / "model.pt")), batches))
        debug = torch.cat(run(torch.jit.load(str(tiny_artifacts / "debug" / "model.pt")), batches))
    torch.testing.assert_close(fp32, eager, rtol=0, atol=1e-4)
    assert not torch.equal(int8, fp32)  # really quantized
    torch.testing.assert_close(int8, fp32, rtol=0, atol=0.5)
    torch.testing.assert_close(debug, int8, rtol=0, atol=1e-3)  # debug emulates the int8 numerics in float


def test_module_gives_the_same_logits_after_save_and_load(tiny_checkpoint: Path, tmp_path: Path):
    ckpt = load_for_tracing(tiny_checkpoint)
    batches = _batches(ckpt, tmp_path)
    module = quantize_int8(trace(ckpt.model, batches[0]))
    before = run(module, batches)
    with deprecations_silenced():
        torch.jit.save(module, str(tmp_path / "m.pt"))
        after = run(torch.jit.load(str(tmp_path / "m.pt")), batches)
    for a, b in zip(before, after, strict=False):
        assert torch.equal(a, b)


def test_two_step_prepare_convert_matches_quantize_dynamic_jit(tiny_checkpoint: Path, tmp_path: Path):
    ckpt = load_for_tracing(tiny_checkpoint)
    batches = _batches(ckpt, tmp_path)
    traced = trace(ckpt.model, batches[0])
    one, two = quantize_int8(traced), quantize_int8(traced, two_step=True)
    assert op_counts(one)["quantized::linear_dynamic"] == op_counts(two)["quantized::linear_dynamic"] == TINY_LINEARS
    for a, b in zip(run(one, batches), run(two, batches), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


class _Progress:
    def update(self, n: int) -> None:
        pass


def test_a_failed_parity_check_names_the_variant(tiny_checkpoint: Path, tmp_path: Path):
    from model_build.errors import VerificationError

    ckpt = load_for_tracing(tiny_checkpoint)
    with pytest.raises(VerificationError, match="parity check failed for int8"):
        build_variants(ckpt, _batches(ckpt, tmp_path), BuildOptions(variants=("int8",), tolerance=0.0), _Progress())


def _cli(*args: str) -> int:
    return main(["--log-level", "ERROR", *args])


def test_cli_build_and_inspect(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "a"
    assert _cli("build", "--model-dir", str(tiny_checkpoint), "--out", str(out), "--variant", "int8") == 0
    assert [p.name for p in out.iterdir()] == ["int8"]
    capsys.readouterr()
    assert _cli("inspect", str(out / "int8")) == 0
    text = capsys.readouterr().out
    assert f"{TINY_LINEARS:6d}  quantized::linear_dynamic" in text
    assert "(verified)" in text
    assert "bert.encoder.layer.1.output.dense" in text  # per-layer scales, named after the model's layers
    assert _cli("inspect", "--json", str(out / "int8")) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["int8_weights"]) == TINY_LINEARS
    assert all(w["qscheme"] == "per_channel_affine" and w["scale_max"] > 0 for w in report["int8_weights"])
    assert report["manifest"]["batch_invariance"]["batch_invariant"] is False


def test_inspect_shows_calibrated_ranges(tiny_artifacts: Path, capsys: pytest.CaptureFixture[str]):
    assert _cli("inspect", str(tiny_artifacts / "int8-calibrated")) == 0
    text = capsys.readouterr().out
    assert f"{TINY_LINEARS:6d}  {FIXED_RANGE_OP}" in text
    assert "fixed int8 activation ranges (calibrated):" in text and "batch-invariant: True" in text


def _assert_error(capsys: pytest.CaptureFixture[str], code: int, pattern: str) -> None:
    import re

    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("breakage", "pattern"),
    [
        ("missing", r"error: checkpoint folder .* does not exist"),
        ("not_bert", r"error: .* holds a 'gpt2' model"),
        ("three_labels", r"error: .* has 3 labels; a paraphrase classifier needs exactly 2"),
        ("no_tokenizer", r"error: cannot load a tokenizer from"),
        ("no_head", r"error: .* is not a BertForSequenceClassification checkpoint"),
    ],
)
def test_bad_checkpoints_exit_2_and_leave_nothing(
    breakage: str, pattern: str, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    if breakage == "missing":
        shutil.rmtree(ckpt)
    elif breakage == "not_bert":
        config["model_type"] = "gpt2"
    elif breakage == "three_labels":
        config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    elif breakage == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            (ckpt / name).unlink()
    elif breakage == "no_head":
        config["architectures"] = ["BertModel"]
    if ckpt.exists():
        (ckpt / "config.json").write_text(json.dumps(config))
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    code = _cli("build", "--model-dir", str(ckpt), "--out", str(out_parent / "a"))
    _assert_error(capsys, code, pattern)
    assert list(out_parent.iterdir()) == []  # no artifact, no staging folder


def test_int8_calibrated_needs_calibration_data(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "a"
    code = _cli("build", "--model-dir", str(tiny_checkpoint), "--out", str(out), "--variant", "int8-calibrated")
    _assert_error(capsys, code, r"int8-calibrated needs MRPC train pairs to calibrate on: pass --calibration-data DIR")
    code = _cli("build", "--model-dir", str(tiny_checkpoint), "--out", str(out), "--calibration-data", str(tmp_path / "none"))
    _assert_error(capsys, code, r"MRPC")
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_force_and_failed_verification_writes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "a"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_error(capsys, _cli("build", "--model-dir", str(tiny_checkpoint), "--out", str(out)), r"exists; pass --force")
    code = _cli("build", "--model-dir", str(tiny_checkpoint), "--out", str(out), "--variant", "int8", "--tolerance", "0", "--force")
    _assert_error(capsys, code, r"parity check failed for int8")
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert (out / "keep.txt").read_text() == "mine"  # a failed build does not touch the old --out


def test_inspect_refuses_a_tampered_model(tiny_artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    copy = tmp_path / "int8"
    shutil.copytree(tiny_artifacts / "int8", copy)
    data = bytearray((copy / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(data))
    _assert_error(capsys, _cli("inspect", str(copy)), r"has sha256 .* but the manifest says .*refusing a modified model")


def test_init_tiny_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "t").mkdir()
    _assert_error(capsys, _cli("init-tiny", "--out", str(tmp_path / "t")), r"exists; pass --force")


def test_every_bucket_shape_is_verified_and_recorded(tiny_artifacts: Path):
    manifest = json.loads((tiny_artifacts / "int8" / "manifest.json").read_text())
    assert len(manifest["verified_shapes"]) == 8 * 8
    assert [1, 32] in manifest["verified_shapes"] and [8, 128] in manifest["verified_shapes"]
    assert manifest["shape_parity"]["shapes"] == 64
    assert manifest["shape_parity"]["max_abs_logit_diff"] <= manifest["shape_parity"]["tolerance"]


def test_a_shape_that_drifts_fails_by_name():
    from model_build.build import check_shapes
    from model_build.errors import VerificationError

    reference = {(1, 32): torch.zeros(1, 2), (3, 64): torch.zeros(3, 2)}
    got = {(1, 32): torch.zeros(1, 2), (3, 64): torch.full((3, 2), 0.2)}
    assert check_shapes("int8", got, reference, 0.5)["max_abs_logit_diff"] == pytest.approx(0.2)
    with pytest.raises(VerificationError, match="shape check failed for int8 at 3x64"):
        check_shapes("int8", got, reference, 0.1)


def test_buckets_no_parity_pair_fits_are_verified_with_truncated_pairs(tiny_artifacts: Path):
    from model_build.build import short_rows

    tokenizer = tiny_artifacts / "int8" / "tokenizer.json"
    rows = [r for r in PairEncoder(tokenizer, 128).encode(PARITY_PAIRS) if len(r) > 16]  # as for a longer-winded model
    extra = short_rows(tokenizer, rows, [(1, 16), (8, 128)])
    assert extra and all(len(r) <= 16 and r.input_ids[0] == 101 and r.input_ids[-1] == 102 for r in extra)
    assert short_rows(tokenizer, rows, [(8, 128)]) == []


def test_float_layers_stay_fp32_only_in_the_variants_named(tiny_checkpoint: Path, mrpc_dir: Path, tmp_path: Path):
    """The accurate model's recipe: FFN output projections fp32 in int8-calibrated, the tutorial's int8 untouched."""
    out = tmp_path / "a"
    args = ["--model-dir", str(tiny_checkpoint), "--out", str(out), "--variant", "int8", "--variant", "int8-calibrated"]
    calibration = ["--calibration-data", str(mrpc_dir), "--calibration-pairs", "16"]
    assert _cli("build", *args, *calibration, "--float-layers", r"layer\.\d+\.output\.dense$", "--float-layers-in", "int8-calibrated") == 0
    kept = ("bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense")
    calibrated = json.loads((out / "int8-calibrated" / "manifest.json").read_text())
    assert tuple(calibrated["int8"]["float_layers"]) == kept
    assert len(calibrated["activation_ranges"]) == TINY_LINEARS - len(kept)
    with deprecations_silenced():
        counts = op_counts(torch.jit.load(str(out / "int8-calibrated" / "model.pt")))
    assert counts[FIXED_RANGE_OP] == TINY_LINEARS - len(kept) and counts["aten::linear"] == len(kept)
    dynamic = json.loads((out / "int8" / "manifest.json").read_text())
    assert dynamic["int8"]["float_layers"] == []
    with deprecations_silenced():
        assert op_counts(torch.jit.load(str(out / "int8" / "model.pt")))["quantized::linear_dynamic"] == TINY_LINEARS
