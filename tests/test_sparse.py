import pytest
import torch

from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import load_checkpoint, save_checkpoint
from distill_utils.prune import prune_magnitude, sparsity
from distill_utils.sparse import pack, pack_bits, unpack, unpack_bits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_bits_round_trip(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and len(packed) == -(-n // 8)
    assert torch.equal(unpack_bits(packed, n), mask)


def test_pack_bits_layout():
    assert pack_bits(torch.tensor([True, False, False, False, False, False, False, True])).tolist() == [129]


def test_pack_only_sparse_tensors_and_round_trip():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(20, 30, generator=g)
    sparse = dense * (torch.rand(20, 30, generator=g) < 0.1)
    stored, shapes = pack({"a": dense, "b": sparse, "n": torch.tensor(3)})
    assert shapes == {"b": [20, 30]} and set(stored) == {"a", "n", "b.__values", "b.__mask"}
    assert stored["b.__values"].numel() == int((sparse != 0).sum())
    back = unpack(stored, shapes)
    assert torch.equal(back["b"], sparse) and torch.equal(back["a"], dense)


def test_sparse_checkpoint_is_smaller_and_identical(tmp_path):
    torch.manual_seed(0)
    model = prune_magnitude(build_model("teacher_cnn"), 0.9, scope="global")  # masks not made permanent
    dense_path = save_checkpoint(model, tmp_path / "dense.safetensors")
    sparse_path = save_checkpoint(model, tmp_path / "sparse.safetensors", sparse=True)
    assert sparse_path.stat().st_size < dense_path.stat().st_size / 4
    a, manifest = load_checkpoint(dense_path)
    b, sparse_manifest = load_checkpoint(sparse_path)
    assert manifest["sparse"] == {} and "classifier.1.weight" in sparse_manifest["sparse"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert sparsity(b)["global"] == pytest.approx(0.9, abs=1e-4)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(b(x), model(x))
