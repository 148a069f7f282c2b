"""Deployment after TorchScript: torch.export of the nn.Modules (dynamic batch and sequence,
self- and cross-attention, with and without a mask, several layers), ExportedProgram
save/load, the nodes the library's operators become, and AOTInductor packages loaded in
Python (the C++ side: ctest's aoti_* tests, examples/run_aoti.cpp and decode_aoti.cpp)."""

import os

import pytest
import torch
from torch import nn

import rotary_attention

N_STATE, N_HEAD = 32, 4


class Decoder(nn.Module):
    def __init__(self, layers=2, absolute_positions=False):
        super().__init__()
        mha = rotary_attention.MultiHeadAttention
        self.self_attn = nn.ModuleList(
            mha(N_STATE, N_HEAD, absolute_positions=absolute_positions) for _ in range(layers)
        )
        self.cross_attn = nn.ModuleList(mha(N_STATE, N_HEAD) for _ in range(layers))

    def forward(self, x, xa, mask=None):
        for self_attn, cross_attn in zip(self.self_attn, self.cross_attn, strict=True):
            x = self_attn(x, mask=mask)[0]
            x = cross_attn(x, xa=xa)[0]
        return x


def randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def export(model, masked):
    batch, seq, audio = (
        torch.export.Dim("batch", max=32),
        torch.export.Dim("seq", min=2, max=48),
        torch.export.Dim("audio"),
    )
    x, xa = torch.randn(2, 5, N_STATE), torch.randn(2, 7, N_STATE)
    if masked:
        mask = torch.empty(48, 48).fill_(float("-inf")).triu_(1)
        shapes = {"x": {0: batch, 1: seq}, "xa": {0: batch, 1: audio}, "mask": None}
        return torch.export.export(model, (x, xa, mask), dynamic_shapes=shapes), mask
    shapes = {"x": {0: batch, 1: seq}, "xa": {0: batch, 1: audio}}
    return torch.export.export(model, (x, xa), dynamic_shapes=shapes), None


def call(fn, x, xa, mask):
    return fn(x, xa, mask) if mask is not None else fn(x, xa)


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
def test_export_of_a_decoder_with_dynamic_batch_and_sequence_round_trips_through_save_and_load(tmp_path, masked):
    model = randomized(Decoder(), seed=1)
    program, mask = export(model, masked)
    torch.export.save(program, tmp_path / "decoder.pt2")
    loaded = torch.export.load(tmp_path / "decoder.pt2")
    with torch.no_grad():
        for b, t, s in [(1, 2, 3), (4, 11, 9), (2, 48, 30)]:
            x, xa = torch.randn(b, t, N_STATE), torch.randn(b, s, N_STATE)
            want = call(model, x, xa, mask)
            torch.testing.assert_close(call(program.module(), x, xa, mask), want, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(call(loaded.module(), x, xa, mask), want, rtol=1e-6, atol=1e-6)


def test_which_operators_stay_single_nodes():
    """multi_head_attention is CompositeImplicitAutograd: export keeps it as one node
    (torch.export preserves custom operators), the decomposition that precedes AOTInductor
    turns it into ATen operators and rotary; rotary has its own kernels and stays one node."""
    program, _ = export(randomized(Decoder(layers=1)), masked=True)

    def targets(p):
        return [str(n.target) for n in p.graph.nodes if n.op == "call_function"]

    assert sum("rotary_attention.multi_head_attention" in t for t in targets(program)) == 2
    decomposed = targets(program.run_decompositions())
    assert not any("multi_head_attention" in t for t in decomposed)
    assert sum(t == "rotary_attention.rotary.default" for t in decomposed) == 4  # q and k of 2 layers


@pytest.fixture(scope="module")
def block_package(tmp_path_factory):
    # A package checks its inputs against the exported shapes only with this set (read at
    # its first run); without it, inputs outside the range run unchecked.
    previous = os.environ.get("AOTI_RUNTIME_CHECK_INPUTS")
    os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = "1"
    model = randomized(Decoder(layers=1), seed=2)
    mask = torch.empty(48, 48).fill_(float("-inf")).triu_(1)
    seq = torch.export.Dim("seq", min=2, max=48)
    path = tmp_path_factory.mktemp("aoti") / "block.pt2"
    args = (torch.randn(2, 5, N_STATE), torch.randn(2, 7, N_STATE), mask)
    rotary_attention.export_aoti_package(model, args, path, dynamic_shapes={"x": {1: seq}, "xa": None, "mask": None})
    yield model, mask, torch._inductor.aoti_load_package(str(path))
    if previous is None:
        del os.environ["AOTI_RUNTIME_CHECK_INPUTS"]
    else:
        os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = previous


def test_aoti_package_matches_eager_and_refuses_inputs_outside_the_exported_range(block_package):
    model, mask, package = block_package
    xa = torch.randn(2, 7, N_STATE)
    with torch.no_grad():
        for t in (2, 17, 48):
            x = torch.randn(2, t, N_STATE)
            torch.testing.assert_close(package(x, xa, mask), model(x, xa, mask), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="49"):
        package(torch.randn(2, 49, N_STATE), xa, mask)  # seq max is 48
    with pytest.raises(RuntimeError, match="3"):
        package(torch.randn(3, 5, N_STATE), xa, mask)  # the batch was exported static (2)


def test_static_decode_step_exported_once_decodes_like_eager():
    """The exported step calls decode_attention, one node per layer, which reads only the
    steps written (the static cache's count is its lengths), and decodes like eager."""
    layers = [
        randomized(rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True), s) for s in (3, 4)
    ]
    step = rotary_attention.StaticDecodeStep(layers).eval()
    cache = step.empty_cache(batch=2, capacity=16)
    program = torch.export.export(step, (torch.randn(2, 1, N_STATE), *cache)).run_decompositions()
    mutated = set(program.graph_signature.user_inputs_to_mutate.values())
    assert len(mutated) == 6  # every layer's key and value buffers and counter, written in place
    nodes = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert nodes.count("rotary_attention.decode_attention.default") == 2
    tokens = torch.randn(2, 12, N_STATE)
    eager = rotary_attention.KVCache()
    run = program.module()
    cache = step.empty_cache(batch=2, capacity=16)
    with torch.no_grad():
        got, want = [], []
        for i in range(12):
            got.append(run(tokens[:, i : i + 1].contiguous(), *cache))
            x = tokens[:, i : i + 1]
            for layer in layers:
                x = layer(x, kv_cache=eager)[0]
            want.append(x)
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), rtol=1e-5, atol=1e-5)
    assert int(cache[2]) == int(cache[5]) == 12
    with pytest.raises(ValueError, match="expected \\(key, value, filled\\) for 2 layers"):
        step(tokens[:, :1], *cache[:3])
