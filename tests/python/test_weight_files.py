"""Weight files through the library's C++ reader and writer: rotary_attention.load_file /
save_file against torch.load / torch.save, and one layer out of a whole model's checkpoint."""

import pytest
import torch
from torch import nn

import rotary_attention
from conftest import randomize
from rotary_attention import reference


def test_save_file_is_read_by_torch_load_and_load_file_reads_torch_save(tmp_path):
    ref = randomize(reference.MultiHeadAttention(32, 4), seed=1)
    state = ref.state_dict()
    rotary_attention.save_file(state, tmp_path / "from_cpp.pt")
    loaded = torch.load(tmp_path / "from_cpp.pt", weights_only=True)
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    torch.save(state, tmp_path / "from_python.pt")
    read = rotary_attention.load_file(tmp_path / "from_python.pt")
    assert sorted(read) == sorted(state)
    for key, value in state.items():
        assert torch.equal(read[key], value) and read[key].dtype == value.dtype, key
    with pytest.raises(TypeError, match="not a tensor"):
        rotary_attention.save_file({"a": 1.0}, tmp_path / "bad.pt")


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(reference.MultiHeadAttention(32, 4) for _ in range(3))
        self.head = nn.Linear(32, 10)


def test_one_layer_out_of_a_whole_model_checkpoint(tmp_path):
    model = Decoder()
    for i, block in enumerate(model.blocks):
        randomize(block, seed=10 + i)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    want = model.blocks[1].state_dict()

    # The nn.Module: load_file with the prefix, then its own strict load.
    layer = rotary_attention.MultiHeadAttention(32, 4)
    layer.load_state_dict(rotary_attention.load_file(path, prefix="blocks.1."))
    # The C++ object: the prefix goes to the C++ loader.
    cpp_layer = rotary_attention.cpp.MultiHeadAttention(32, 4)
    cpp_layer.load(str(path), prefix="blocks.1.")
    for got in (layer.state_dict(), cpp_layer.state_dict()):
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert torch.equal(got[key], value), key

    # Strict within the prefix: a layer of another size, or a prefix with no entries.
    before = {k: v.clone() for k, v in cpp_layer.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch"):
        rotary_attention.cpp.MultiHeadAttention(64, 4).load(str(path), prefix="blocks.1.")
    with pytest.raises(RuntimeError, match='no entry .* under the prefix "blocks.7."'):
        cpp_layer.load(str(path), prefix="blocks.7.")
    with pytest.raises(RuntimeError, match="unexpected keys"):
        cpp_layer.load(str(path), prefix="blocks.")  # "0.query.weight", ...: not this layer's keys
    for key, value in cpp_layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_safetensors_both_ways_with_the_safetensors_library(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    ref = randomize(reference.MultiHeadAttention(32, 4), seed=2).to(torch.bfloat16)
    state = ref.state_dict()

    # Python's safetensors -> the library (load_file, the C++ object's load).
    safetensors_torch.save_file(state, tmp_path / "from_python.safetensors")
    read = rotary_attention.load_file(tmp_path / "from_python.safetensors")
    assert sorted(read) == sorted(state)
    for key, value in state.items():
        assert read[key].dtype == torch.bfloat16 and torch.equal(read[key], value), key
    cpp_layer = rotary_attention.cpp.MultiHeadAttention(32, 4).to(torch.bfloat16)
    cpp_layer.load(tmp_path / "from_python.safetensors")
    for key, value in cpp_layer.state_dict().items():
        assert torch.equal(value, state[key]), key

    # The library -> Python's safetensors: by extension, by format=, and the C++ object's save.
    rotary_attention.save_file(state, tmp_path / "from_cpp.safetensors")
    rotary_attention.save_file(state, tmp_path / "named.pt", format="safetensors")
    cpp_layer.save(tmp_path / "module.safetensors")
    for name in ("from_cpp.safetensors", "named.pt", "module.safetensors"):
        loaded = safetensors_torch.load_file(tmp_path / name)
        assert sorted(loaded) == sorted(state), name
        for key, value in state.items():
            assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), (name, key)
    # The format is told by the content, not the name.
    assert sorted(rotary_attention.load_file(tmp_path / "named.pt")) == sorted(state)
    rotary_attention.save_file(state, tmp_path / "zip.safetensors", format="torch_save")
    assert (tmp_path / "zip.safetensors").read_bytes()[:4] == b"PK\x03\x04"  # torch.save's zip
    assert sorted(rotary_attention.load_file(tmp_path / "zip.safetensors")) == sorted(state)
    with pytest.raises(RuntimeError, match="format must be"):
        rotary_attention.save_file(state, tmp_path / "x", format="npz")


def test_every_safetensors_dtype_torch_has_is_read(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
              torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint64,
              torch.uint32, torch.uint16, torch.uint8, torch.bool]  # fmt: skip
    values = torch.arange(-6, 6, dtype=torch.float64).reshape(3, 4)
    state = {str(d): (values.abs() if not d.is_signed else values).to(d) for d in dtypes}
    safetensors_torch.save_file(state, tmp_path / "all.safetensors")
    read = rotary_attention.load_file(tmp_path / "all.safetensors")
    for key, value in state.items():
        assert read[key].dtype == value.dtype, key
        assert torch.equal(read[key].view(torch.uint8), value.view(torch.uint8)), key
    rotary_attention.save_file(state, tmp_path / "back.safetensors")
    back = safetensors_torch.load_file(tmp_path / "back.safetensors")
    for key, value in state.items():
        assert torch.equal(back[key].view(torch.uint8), value.view(torch.uint8)), key
