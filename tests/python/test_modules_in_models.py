"""The layers as torch.nn.Modules inside models, beside the original inside an
identical model: parameters, state dicts, dtype moves, copies, pickling,
functional calls, training, torch.compile, torch.export and DDP."""

import copy
import io
import os
import pickle
import socket

import pytest
import torch
import torch._dynamo.testing
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rotary_attention
from conftest import causal_mask, original_sdpa, path_tolerance, randomize
from rotary_attention import reference

N_STATE, N_HEAD = 32, 4


class Block(nn.Module):
    """A decoder block: self-attention, cross-attention, an MLP."""

    def __init__(self, attention_class, **kwargs):
        super().__init__()
        self.attn = attention_class(N_STATE, N_HEAD, **kwargs)
        self.cross_attn = attention_class(N_STATE, N_HEAD, **kwargs)
        self.mlp = nn.Sequential(nn.Linear(N_STATE, 2 * N_STATE), nn.GELU(), nn.Linear(2 * N_STATE, N_STATE))

    def forward(self, x, xa, mask=None):
        x = self.attn(x, mask=mask)[0]
        x = self.cross_attn(x, xa=xa)[0]
        return x + self.mlp(x)


def twin_blocks(seed=0, dtype=torch.float64, **kwargs):
    """The same block built from the original layers and from the port, with the same weights."""
    original = Block(reference.MultiHeadAttention, **kwargs)
    for layer in (original.attn, original.cross_attn):
        randomize(layer, seed)
        seed += 1
    port = Block(rotary_attention.MultiHeadAttention, **kwargs)
    port.load_state_dict(original.state_dict())
    return original.to(dtype), port.to(dtype)


def test_parents_see_parameters_buffers_and_keys():
    original, port = twin_blocks()
    assert isinstance(port.attn, nn.Module)
    assert list(port.state_dict()) == list(original.state_dict())
    assert "attn.query.weight" in port.state_dict() and "cross_attn.rotary_emb.inv_freq" in port.state_dict()
    assert [n for n, _ in port.named_parameters()] == [n for n, _ in original.named_parameters()]
    assert sum(p.numel() for p in port.parameters()) == sum(p.numel() for p in original.parameters())
    assert [n for n, _ in port.named_buffers()] == [n for n, _ in original.named_buffers()]
    port.float()
    assert all(p.dtype == torch.float32 for p in port.parameters())
    port.double()
    assert port.attn.rotation_layer.rotation_matrix.dtype == torch.float64
    assert port.attn.rotary_emb.inv_freq.dtype == torch.float64
    result = port.load_state_dict({"attn.query.weight": original.attn.query.weight}, strict=False)
    assert "attn.key.weight" in result.missing_keys


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_block_parity_forward_and_backward(sdpa):
    original, port = twin_blocks()
    for layer in (port.attn, port.cross_attn):
        layer.sdpa = sdpa
    original.eval()
    port.eval()
    x = torch.randn(2, 6, N_STATE, dtype=torch.float64)
    xa = torch.randn(2, 9, N_STATE, dtype=torch.float64)
    mask = causal_mask(6, torch.float64)
    with original_sdpa(sdpa):
        want = original(x, xa, mask)
        got = port(x, xa, mask)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        g = torch.randn_like(want)
        want.backward(g)
        got.backward(g)
    tol = path_tolerance(torch.float64, sdpa)["rtol"]
    for (name, p), (_, q) in zip(original.named_parameters(), port.named_parameters(), strict=True):
        if p.grad is None:  # temperature on the SDPA path, as the original
            assert q.grad is None, name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol, msg=name)


def test_deepcopy_pickle_save_hooks_and_functional_call(tmp_path):
    _, port = twin_blocks()
    port.eval()
    x = torch.randn(2, 5, N_STATE, dtype=torch.float64)
    xa = torch.randn(2, 7, N_STATE, dtype=torch.float64)
    want = port(x, xa)
    for clone in (copy.deepcopy(port), pickle.loads(pickle.dumps(port))):
        torch.testing.assert_close(clone(x, xa), want, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(port, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x, xa), want, rtol=0, atol=0)
    seen = []
    handle = port.attn.register_forward_hook(lambda module, args, output: seen.append(output[0].shape))
    port(x, xa)
    handle.remove()
    assert seen == [x.shape]
    params = {k: v * 2 for k, v in port.named_parameters()}
    doubled = torch.func.functional_call(port, params, (x, xa))
    assert not torch.equal(doubled, want)
    torch.testing.assert_close(port(x, xa), want, rtol=0, atol=0)  # the module itself is untouched


def test_training_with_adamw_matches_the_original():
    """Same weights, same data, AdamW steps: the same losses and final weights to fp64 rounding."""
    original, port = twin_blocks(seed=3, dropout_rate=0.0)
    original.train()
    port.train()
    g = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(4, 6, N_STATE, generator=g, dtype=torch.float64),
            torch.randn(4, 8, N_STATE, generator=g, dtype=torch.float64),
        )
        for _ in range(5)
    ]
    mask = causal_mask(6, torch.float64)
    losses = []
    for model in (original, port):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        run = []
        with original_sdpa(True):
            for x, xa in data:
                opt.zero_grad()
                loss = model(x, xa, mask).pow(2).mean()
                loss.backward()
                opt.step()
                run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-10, abs=1e-12)
    for (name, p), (_, q) in zip(original.named_parameters(), port.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-9, msg=name)


def test_torch_compile_fullgraph_and_dynamic_sequence_without_recompiling():
    _, port = twin_blocks(dtype=torch.float32)
    port.eval()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(port, backend=counter, fullgraph=True, dynamic=True)
    xa = torch.randn(2, 9, N_STATE)
    for T in (5, 7, 11):
        x = torch.randn(2, T, N_STATE, requires_grad=True)
        want = port(x, xa, causal_mask(T))
        got = compiled(x, xa, causal_mask(T))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(want)
        torch.testing.assert_close(
            torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0], rtol=1e-5, atol=1e-5
        )
    assert counter.frame_count == 1


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_torch_export_with_dynamic_batch_and_sequence(masked):
    _, port = twin_blocks(dtype=torch.float32)
    port.eval()
    batch, seq, audio = torch.export.Dim("batch"), torch.export.Dim("seq", min=2), torch.export.Dim("audio")
    mask = causal_mask(32) if masked else None
    shapes = {"x": {0: batch, 1: seq}, "xa": {0: batch, 1: audio}, "mask": None}
    ep = torch.export.export(
        port, (torch.randn(2, 5, N_STATE), torch.randn(2, 7, N_STATE), mask), dynamic_shapes=shapes
    )
    for b, t, s in [(2, 5, 7), (3, 9, 4), (1, 2, 11)]:
        x, xa = torch.randn(b, t, N_STATE), torch.randn(b, s, N_STATE)
        torch.testing.assert_close(ep.module()(x, xa, mask), port(x, xa, mask), rtol=1e-5, atol=1e-5)


def test_bad_input_gives_clear_errors():
    layer = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD)
    with pytest.raises(RuntimeError, match=r"expected x of shape \(B, T, n_state=32\)"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(RuntimeError, match="must be a floating tensor"):
        layer(torch.ones(2, 5, N_STATE, dtype=torch.long))
    with pytest.raises(RuntimeError, match="batch size"):
        layer(torch.randn(2, 5, N_STATE), xa=torch.randn(3, 4, N_STATE))
    with pytest.raises(ValueError, match="divisible"):
        rotary_attention.MultiHeadAttention(30, 4)
    cache = rotary_attention.KVCache()
    layer(torch.randn(2, 1, N_STATE), kv_cache=cache)
    with pytest.raises(RuntimeError, match="KVCache"):
        layer(torch.randn(3, 1, N_STATE), kv_cache=cache)  # another batch size on the same cache
    # Keys cached by a layer of another size, handed to this one.
    wide = rotary_attention.MultiHeadAttention(2 * N_STATE, N_HEAD)
    wide_cache = rotary_attention.KVCache()
    wide(torch.randn(2, 3, 2 * N_STATE), kv_cache=wide_cache)
    key, value = wide_cache.get(wide)
    with pytest.raises(RuntimeError, match="cannot use cached keys of shape"):
        layer._attention(torch.randn(2, 1, N_STATE), None, None, key, value, 3)


def test_autocast_runs_the_layer_in_bfloat16():
    """Under torch.autocast the operator's linear layers and attention run in
    bf16 (autocast reaches the ATen ops inside it; the residuals stay fp32);
    the result stays within bf16 rounding (a few eps of the output's scale) of
    the fp32 forward."""
    _, port = twin_blocks(dtype=torch.float32)
    port.eval()
    x, xa = torch.randn(2, 6, N_STATE), torch.randn(2, 9, N_STATE)
    want = port(x, xa, causal_mask(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = port(x, xa, causal_mask(6))
    assert not torch.equal(got.float(), want)  # the projections did run in bf16
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want, rtol=0, atol=8 * torch.finfo(torch.bfloat16).eps * scale)


def _ddp_worker(rank, world_size, port, path, steps, x, xa, mask):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = torch.load(path, weights_only=False)
    # The SDPA path leaves `temperature` unused, as the original does.
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    shard = slice(rank * x.shape[0] // world_size, (rank + 1) * x.shape[0] // world_size)
    for _ in range(steps):
        opt.zero_grad()
        ddp(x[shard], xa[shard], mask).pow(2).mean().backward()
        opt.step()
    if rank == 0:
        torch.save(model.state_dict(), path + ".trained")
    dist.destroy_process_group()


def test_ddp_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    _, port = twin_blocks(seed=5, dtype=torch.float64, dropout_rate=0.0)
    port.train()
    path = os.fspath(tmp_path / "model.pt")
    torch.save(port, path)
    x = torch.randn(4, 6, N_STATE, dtype=torch.float64)
    xa = torch.randn(4, 8, N_STATE, dtype=torch.float64)
    mask = causal_mask(6, torch.float64)
    steps = 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, free_port, path, steps, x, xa, mask), nprocs=2, join=True)
    trained = torch.load(path + ".trained", weights_only=True)
    opt = torch.optim.SGD(port.parameters(), lr=0.1)
    for _ in range(steps):  # the mean over the whole batch equals the mean of the two shards' means
        opt.zero_grad()
        port(x, xa, mask).pow(2).mean().backward()
        opt.step()
    for name, value in port.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-9, atol=1e-9, msg=name)
