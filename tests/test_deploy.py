"""ONNX export, int8 quantization and their lineage (distill_utils.deploy, notebook 09)."""
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from distill_utils import deploy, models
from distill_utils.__main__ import main as cli
from distill_utils.data import Split, load_dataset
from distill_utils.deploy import DeployError
from distill_utils.distill import distill
from distill_utils.provenance.checkpoints import load_checkpoint, load_pretrained, save_checkpoint
from distill_utils.provenance.lineage import Lineage, file_ref, lineage_chain
from distill_utils.prune import prune_channels


def tiny(seed=0):
    torch.manual_seed(seed)
    model = models.build_model("student_cnn", width=0.5).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding BN into the conv is really tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion_mnist")


def test_export_matches_pytorch_at_any_batch_size(tmp_path):
    model = tiny()
    path = deploy.export_onnx(model, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    for n in (1, 7, 300):  # the batch axis is dynamic
        x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = model(x).numpy()
        got = deploy.predict_onnx(path, x)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    meta = deploy.onnx_metadata(path)
    assert 0 <= meta["max_abs_diff"] < 1e-4
    assert meta["architecture"]["name"] == "student_cnn"
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(path).graph.node}  # folded by the exporter


def test_fused_conv_bn_same_outputs():
    model = tiny()
    fused = deploy.fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


def test_int8_params_by_hand():
    # uint8: [-1, 3] -> scale 4/255, zero point round(0 - (-1)/scale) = round(63.75) = 64
    scale, zp = deploy.int8_params(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zp == 64
    assert deploy.int8_params(0.5, 2.0) == pytest.approx((2 / 255, 0))  # the range always includes 0
    assert deploy.int8_params(-3.0, 1.0, signed=True) == pytest.approx((3 / 127, 0))  # symmetric, as for weights
    q = deploy.quantize_tensor([-1.0, 0.0, 3.0, 10.0], scale, zp)
    assert q.tolist() == [0, 64, 255, 255]  # 10 saturates


def test_quantize_tensor_matches_onnxruntime():
    """Our formula against onnxruntime's QuantizeLinear on the same values, scale and zero point."""
    x = np.random.default_rng(0).normal(size=(1000,)).astype(np.float32) * 3
    scale, zp = deploy.int8_params(x.min(), x.max())
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [1000])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
                               helper.make_tensor("z", TensorProto.UINT8, [], [zp])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], deploy.quantize_tensor(x, scale, zp))


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory, fashion):
    folder = tmp_path_factory.mktemp("teacher")
    teacher, _ = load_pretrained()
    fp32 = deploy.export_onnx(teacher, folder / "teacher.onnx")
    int8 = deploy.quantize_int8(fp32, folder / "teacher_int8.onnx", fashion.train, images=256)
    return teacher, fp32, int8


def test_static_int8_keeps_the_teachers_accuracy(teacher_files, fashion):
    teacher, fp32, int8 = teacher_files
    test = fashion.test.subset(2000, seed=1)
    with torch.no_grad():
        reference = (teacher(test.x).argmax(1) == test.y).float().mean().item()
    assert deploy.evaluate_onnx(fp32, test) == pytest.approx(reference, abs=1e-3)
    assert abs(deploy.evaluate_onnx(int8, test) - reference) < 0.01  # within 1 point on 2,000 images
    assert {n.op_type for n in onnx.load(int8).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert int8.stat().st_size < fp32.stat().st_size / 3.5  # int8 weights: ~4x smaller


def test_runtime_scale_and_zero_point_match_hand_computation(teacher_files, fashion):
    """The logits' scale and zero point in the int8 graph are int8_params(min, max) of the
    teacher's logits on the calibration images."""
    teacher, _, int8 = teacher_files
    with torch.no_grad():
        logits = teacher(deploy.calibration_images(fashion.train, 256))
    scale, zp = deploy.int8_params(logits.min().item(), logits.max().item())
    runtime = deploy.quantization_params(int8)
    got_scale, got_zp = next(v for k, v in runtime.items() if k.startswith("logits"))
    assert got_scale == pytest.approx(scale, rel=1e-4) and got_zp == zp


def test_relu_before_pool_is_exact_and_keeps_qoperator_accurate(tmp_path, teacher_files, fashion):
    teacher, fp32, _ = teacher_files
    model = onnx.load(fp32)
    assert deploy.relu_before_pool(model) == 3 and deploy.relu_before_pool(model) == 0  # one per block, once
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    pools = [i for i, op in enumerate(ops) if op == "MaxPool"]
    assert len(pools) == 3 and all(ops[i - 2:i] == ["Conv", "Relu"] for i in pools) and ops.count("Relu") == 4
    onnx.save(model, tmp_path / "moved.onnx")
    first_conv = onnx.load(fp32)
    assert deploy.relu_before_pool(first_conv, [first_conv.graph.node[0].name]) == 2
    assert [n.op_type for n in first_conv.graph.node][:3] == ["Conv", "MaxPool", "Relu"]
    x = fashion.test.x[:64]
    assert np.array_equal(deploy.predict_onnx(tmp_path / "moved.onnx", x), deploy.predict_onnx(fp32, x))
    test = fashion.test.subset(2000, seed=1)
    qop = deploy.quantize_int8(fp32, tmp_path / "qop.onnx", fashion.train, images=256, quant_format="qoperator")
    assert deploy.onnx_metadata(qop)["steps"][-1]["relu_moved_before_pool"] == 2  # not after the fp32 first conv
    assert "QLinearConv" in {n.op_type for n in onnx.load(qop).graph.node}
    assert abs(deploy.evaluate_onnx(qop, test) - deploy.evaluate_onnx(fp32, test)) < 0.01


def test_relu_before_pool_leaves_a_pool_with_other_readers():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["y"]), helper.make_node("Neg", ["p"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs))
    assert deploy.relu_before_pool(model) == 0 and [n.op_type for n in model.graph.node] == ["MaxPool", "Relu", "Neg"]


def test_dynamic_int8(tmp_path, teacher_files, fashion):
    _, fp32, _ = teacher_files
    test = fashion.test.subset(500, seed=2)
    dyn = deploy.quantize_int8(fp32, tmp_path / "dyn.onnx", method="dynamic")
    assert abs(deploy.evaluate_onnx(dyn, test) - deploy.evaluate_onnx(fp32, test)) < 0.02
    assert deploy.onnx_metadata(dyn)["steps"][-1]["method"] == "dynamic"


def test_latency_onnx(teacher_files):
    out = deploy.latency_onnx(teacher_files[1], batch_size=4, repeats=3, warmup=1, threads=1)
    assert out["latency_ms"] > 0 and out["threads"] == 1 and out["batch_size"] == 4


def test_interleaved_timer_alternates_and_pairs_by_round():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = deploy.interleaved_ms(runners, rounds=2, repeats={"a": 2, "b": 1}, warmup=1)
    # each round: a (1 warm-up + 2 timed), then b (1 + 1); then the next round
    assert calls == ["a"] * 3 + ["b"] * 2 + ["a"] * 3 + ["b"] * 2
    assert set(times) == {"a", "b"} and all(len(t) == 2 and min(t) >= 0 for t in times.values())
    assert deploy.paired_speedup([4.0, 10.0, 6.0], [2.0, 2.0, 3.0]) == 2.0  # median of 2, 5, 2
    with pytest.raises(ValueError, match="repeats has no count for"):
        deploy.interleaved_ms(runners, rounds=1, repeats={"a": 1})


def test_time_models_runs_every_model_at_every_batch_in_turn_each_round():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            seen.append((self.name, x.shape[0]))
            return x

    batches = {1: torch.zeros(1, 3), 8: torch.zeros(8, 3)}
    times = deploy.time_models({"a": Probe("a"), "b": Probe("b")}, batches, rounds=2, repeats={1: 2, 8: 1})
    assert set(times) == {("a", 1), ("a", 8), ("b", 1), ("b", 8)} and all(len(t) == 2 for t in times.values())
    one_round = [("a", 1)] * 5 + [("a", 8)] * 4 + [("b", 1)] * 5 + [("b", 8)] * 4  # 3 warm-up calls + the timed ones
    assert seen == one_round * 2


def test_runners_leave_the_callers_model_alone(teacher_files):
    teacher, fp32, _ = teacher_files
    x = torch.randn(2, 1, 28, 28)
    before = {k: v.stride() for k, v in teacher.state_dict().items()}
    deploy.torch_runner(teacher, x)()
    assert {k: v.stride() for k, v in teacher.state_dict().items()} == before  # layout unchanged
    assert deploy.onnx_runner(fp32, x, threads=1)() is not None


def test_quantize_torch_int8_restores_the_quantized_engine(fashion):
    before = torch.backends.quantized.engine
    other = next(e for e in torch.backends.quantized.supported_engines if e not in (before, "none"))
    torch.backends.quantized.engine = other
    try:
        model = tiny()
        int8 = deploy.quantize_torch_int8(model, fashion.train, images=64)
        assert torch.backends.quantized.engine == other
    finally:
        torch.backends.quantized.engine = before
    x = fashion.test.x[:256]
    with torch.no_grad():
        agree = (int8(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree > 0.9  # an int8 copy of the same model


def test_lineage_round_trip(tmp_path, monkeypatch, capsys, fashion):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "k" * 32)
    ckpt = save_checkpoint(tiny(), tmp_path / "student.safetensors")
    model, manifest = load_checkpoint(ckpt)
    fp32 = deploy.export_onnx(model, tmp_path / "student.onnx", lineage=Lineage.of(manifest))
    int8 = deploy.quantize_int8(fp32, tmp_path / "student_int8.onnx", fashion.train, images=64)
    chain = lineage_chain(int8)
    assert [e["path"] for e in chain] == [str(int8), str(fp32.resolve()), str(ckpt.resolve())]
    assert chain[1]["sha256"] == hashlib.sha256(fp32.read_bytes()).hexdigest()
    assert chain[2]["sha256"] == manifest["sha256"]
    assert [s["op"] for s in chain[0]["steps"]] == ["export_onnx", "quantize_int8"]
    assert [e["verified"] for e in chain] == ["signed", "signed", "signed"]
    assert not any(e["problem"] for e in chain)
    assert cli(["lineage", str(int8)]) == 0
    printed = capsys.readouterr().out
    assert "quantize_int8(method=static" in printed and str(ckpt.resolve()) in printed

    # tampering: change a recorded step; the signature no longer matches
    proto = onnx.load(int8)
    for p in proto.metadata_props:
        if p.key == "distill_lab.steps":
            p.value = p.value.replace("static", "dynamic")
    onnx.save(proto, int8)
    assert lineage_chain(int8)[0]["verified"] == "unverified"


def test_whole_chain_from_int8_back_to_the_teacher(tmp_path, fashion):
    """teacher checkpoint -> channel-pruned + distilled checkpoint -> fp32 ONNX -> int8 ONNX: the
    walker goes from the int8 file back through both file kinds to the teacher, named twice
    (pruned from it and distilled from it) but listed once. Upper-case suffixes are read too."""
    teacher_file = save_checkpoint(tiny(1), tmp_path / "teacher.safetensors")
    teacher, teacher_manifest = load_checkpoint(teacher_file)
    student = prune_channels(teacher, 0.5)
    distill(student, teacher, fashion.train.subset(64, seed=0), epochs=1, progress=False)
    lineage = Lineage.of(teacher_manifest).then("prune_channels", amount=0.5).then(
        "distill", teacher=file_ref(teacher_manifest), T=4.0)
    kd_file = save_checkpoint(student, tmp_path / "pruned_kd.safetensors", lineage=lineage)
    _, kd_manifest = load_checkpoint(kd_file)
    fp32 = deploy.export_onnx(student, tmp_path / "pruned_kd.onnx", lineage=Lineage.of(kd_manifest))
    int8 = deploy.quantize_int8(fp32, tmp_path / "pruned_kd_int8.onnx", method="dynamic")
    loud = tmp_path / "PRUNED_KD_INT8.ONNX"
    loud.write_bytes(int8.read_bytes())
    for top in (int8, loud):
        chain = lineage_chain(top)
        assert [(e["depth"], e["role"], e["path"]) for e in chain] == [
            (0, "checkpoint", str(top)), (1, "from", str(fp32.resolve())), (2, "from", str(kd_file.resolve())),
            (3, "from and teacher", str(teacher_file.resolve()))]
        assert not any(e["problem"] for e in chain)
        assert [[s["op"] for s in e["steps"]] for e in chain] == [
            ["export_onnx", "quantize_int8"], ["export_onnx"], ["prune_channels", "distill"], []]
    assert chain[2]["steps"][1]["teacher"]["sha256"] == chain[3]["sha256"] == teacher_manifest["sha256"]


def test_lineage_of_a_moved_parent(tmp_path, capsys):
    fp32 = deploy.export_onnx(tiny(), tmp_path / "a.onnx")
    int8 = deploy.quantize_int8(fp32, tmp_path / "b.onnx", method="dynamic")
    fp32.unlink()
    chain = lineage_chain(int8)
    assert chain[0]["problem"] is None and chain[1]["problem"] == "file not found"
    assert cli(["lineage", str(int8)]) == 1
    assert "1 link(s) of the lineage are broken" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input: clear errors, nothing lost

class DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum().item() > 0 else x  # Python control flow on a tensor's value


def test_unexportable_model_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(DeployError, match="cannot export DataDependent to ONNX"):
        deploy.export_onnx(DataDependent(), path, torch.ones(1, 1, 28, 28))
    assert path.read_bytes() == b"old"
    with pytest.raises(DeployError, match="must end in .onnx"):
        deploy.export_onnx(tiny(), tmp_path / "m.pt")
    with pytest.raises(DeployError, match="lineage must be a Lineage"):
        deploy.export_onnx(tiny(), path, lineage={"parents": []})
    assert path.read_bytes() == b"old"


def test_unknown_quantize_setting_is_a_clear_error(tmp_path):
    fp32 = deploy.export_onnx(tiny(), tmp_path / "m.onnx")
    with pytest.raises(DeployError, match=r"unknown quantize_int8 setting\(s\) \['calibraton'\]; the settings are"):
        deploy.quantize_int8(fp32, tmp_path / "q.onnx", method="dynamic", calibraton=10)
    with pytest.raises(DeployError, match="method must be 'static' or 'dynamic', got 'weights'"):
        deploy.quantize_int8(fp32, tmp_path / "q.onnx", method="weights")
    assert not (tmp_path / "q.onnx").exists()


def test_unusable_signing_key_is_a_deploy_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "short")
    with pytest.raises(DeployError, match="the signing key is 5 bytes"):
        deploy.export_onnx(tiny(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_calibration_shape_is_a_clear_error(tmp_path):
    fp32 = deploy.export_onnx(tiny(), tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    out.write_bytes(b"old")
    cifar_like = Split(torch.randn(64, 3, 32, 32), torch.zeros(64, dtype=torch.long))
    shape = r"calibration images of shape \(64, 3, 32, 32\) do not fit .* \(batch, 1, 28, 28\)"
    with pytest.raises(DeployError, match=shape):
        deploy.quantize_int8(fp32, out, cifar_like)
    with pytest.raises(DeployError, match="images=512 calibration images asked for, the split has 10"):
        deploy.quantize_int8(fp32, out, torch.randn(10, 1, 28, 28))
    with pytest.raises(DeployError, match="calibration must be a data Split"):
        deploy.quantize_int8(fp32, out, None)
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("content", ["text", "safetensors", "truncated", "empty"])
def test_not_an_onnx_file_is_a_clear_error(tmp_path, content, fashion):
    good = deploy.export_onnx(tiny(), tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    if content == "text":
        bad.write_text("this is not a model\n" * 20)
    elif content == "safetensors":
        bad.write_bytes(save_checkpoint(tiny(), tmp_path / "x.safetensors").read_bytes())
    elif content == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        bad.write_bytes(b"")
    before = bad.read_bytes()
    with pytest.raises(DeployError, match=r"bad.onnx is not a readable ONNX model .*Export it again"):
        deploy.evaluate_onnx(bad, fashion.test.subset(10))
    assert bad.read_bytes() == before
    assert cli(["lineage", str(bad)]) == 1


def test_evaluate_rejects_wrong_images(tmp_path):
    fp32 = deploy.export_onnx(tiny(), tmp_path / "m.onnx")
    with pytest.raises(DeployError, match=r"images of shape \(4, 3, 32, 32\) do not fit"):
        deploy.evaluate_onnx(fp32, Split(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(DeployError, match="ONNX file .* not found"):
        deploy.evaluate_onnx(tmp_path / "missing.onnx", Split(torch.randn(4, 1, 28, 28), torch.zeros(4)))
