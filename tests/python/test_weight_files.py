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
    with pytest.raises(RuntimeError, match='no entry .* starting with "blocks.7."'):
        cpp_layer.load(str(path), prefix="blocks.7.")
    with pytest.raises(RuntimeError, match="unexpected keys"):
        cpp_layer.load(str(path), prefix="blocks.")  # "0.query.weight", ...: not this layer's keys
    for key, value in cpp_layer.state_dict().items():
        assert torch.equal(value, before[key]), key
