"""The C++-backed layers against the original layers, in the same process."""

import os

import pytest
import torch

import rotary_attention
from conftest import DEVICES, IMPLEMENTATIONS, IMPLS, causal_mask, grad_tolerances, make_pair, original_sdpa, randomize
from rotary_attention import reference

# Forward outputs on the CPU are compared bitwise: the port runs the original's
# ATen ops in the original's order and its rotary kernel reproduces the
# original's floats, in fp32 and fp64, on both attention paths.
BITWISE = dict(rtol=0, atol=0)

GRID = [  # (n_state, n_head, B, T, S)
    (64, 4, 2, 5, 7),
    (32, 1, 1, 1, 3),
    (48, 6, 3, 9, 1),
    (128, 8, 2, 16, 16),
    (20, 2, 1, 4, 11),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("n_state,n_head,B,T,S", GRID)
def test_forward_parity(n_state, n_head, B, T, S, sdpa, dtype, impl):
    ref, port = make_pair(n_state, n_head, sdpa=sdpa, dtype=dtype, seed=n_state + T, impl=impl)
    x = torch.randn(B, T, n_state, dtype=dtype)
    xa = torch.randn(B, S, n_state, dtype=dtype)
    cases = [(None, None), (None, causal_mask(T + 3)), (xa, None)]
    if sdpa or T == 1 or S == T:  # where the original's explicit path runs with a mask
        cases.append((xa, causal_mask(max(T, S) + 2)))
    with original_sdpa(sdpa), torch.no_grad():
        for xa_i, mask in cases:
            want_out, want_qk = ref(x, xa=xa_i, mask=mask)
            got_out, got_qk = port(x, xa=xa_i, mask=mask)
            assert got_out.dtype == want_out.dtype
            torch.testing.assert_close(got_out, want_out, **BITWISE)
            if sdpa:
                assert got_qk is None and want_qk is None
            else:
                assert got_qk.dtype == torch.float32
                torch.testing.assert_close(got_qk, want_qk, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("n_state,n_head,B,T", [(64, 4, 2, 6), (32, 2, 1, 3)])
def test_backward_parity(n_state, n_head, B, T, cross, sdpa, impl):
    ref, port = make_pair(n_state, n_head, sdpa=sdpa, dtype=torch.float64, seed=7, impl=impl)
    x = torch.randn(B, T, n_state, dtype=torch.float64)
    xa = torch.randn(B, T + 2, n_state, dtype=torch.float64) if cross else None
    mask = None if cross else causal_mask(T)
    grad = torch.randn(B, T, n_state, dtype=torch.float64)
    results = []
    with original_sdpa(sdpa):
        for model in (ref, port):
            xi = x.clone().requires_grad_()
            xai = None if xa is None else xa.clone().requires_grad_()
            out, _ = model(xi, xa=xai, mask=mask)
            out.backward(grad)
            grads = {"x": xi.grad}
            if xai is not None:
                grads["xa"] = xai.grad
            grads.update({n: p.grad for n, p in model.named_parameters()})
            results.append(grads)
    want, got = results
    assert set(got) == set(want)
    rtol, atol = grad_tolerances(sdpa)
    for name in want:
        if want[name] is None:  # temperature is unused on the SDPA path
            assert sdpa and name == "temperature" and got[name] is None
            continue
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_dropout_draws_the_same_mask(impl):
    ref, port = make_pair(32, 4, sdpa=False, dropout_rate=0.3, seed=3, impl=impl)
    ref.train()
    port.train()
    x = torch.randn(2, 6, 32)
    with original_sdpa(False):
        torch.manual_seed(5)
        want, _ = ref(x, mask=causal_mask(6))
        torch.manual_seed(5)
        got, _ = port(x, mask=causal_mask(6))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # ...and dropout is really on: another draw differs.
    torch.manual_seed(6)
    other, _ = port(x, mask=causal_mask(6))
    assert not torch.allclose(other, got)


class Decoder(torch.nn.Module):
    """Whisper-like decoder block: self-attention then cross-attention."""

    def __init__(self, attn, cross):
        super().__init__()
        self.attn = attn
        self.cross_attn = cross

    def forward(self, x, xa, mask, kv_cache):
        x = self.attn(x, mask=mask, kv_cache=kv_cache)[0]
        return self.cross_attn(x, xa=xa, kv_cache=kv_cache)[0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_decoding_with_cache_matches_whisper_hooks(sdpa, dtype, impl):
    n_state, n_head, n_text_ctx = 64, 4, 32
    ref_self, port_self = make_pair(n_state, n_head, sdpa=sdpa, dtype=dtype, seed=11, impl=impl)
    ref_cross, port_cross = make_pair(n_state, n_head, sdpa=sdpa, dtype=dtype, seed=12, impl=impl)
    ref_dec = Decoder(ref_self, ref_cross)
    xa = torch.randn(2, 40, n_state, dtype=dtype)  # longer than n_text_ctx, as audio features are
    mask = causal_mask(n_text_ctx, dtype)
    cache, hooks = reference.install_kv_cache_hooks(ref_dec, n_text_ctx=n_text_ctx)
    port_cache = IMPLEMENTATIONS[impl].KVCache()
    steps = [torch.randn(2, 3, n_state, dtype=dtype)] + [torch.randn(2, 1, n_state, dtype=dtype) for _ in range(7)]
    with original_sdpa(sdpa), torch.no_grad():
        for i, tokens in enumerate(steps):
            want = ref_dec(tokens, xa, mask, cache)
            mid = port_self(tokens, mask=mask, kv_cache=port_cache)[0]
            got = port_cross(mid, xa=xa, kv_cache=port_cache)[0]
            torch.testing.assert_close(got, want, **BITWISE, msg=f"step {i}")
            assert port_cache.length(port_self) == cache[ref_self.key].shape[1]
            assert port_cache.length(port_cross) == xa.shape[1]
            key, value = port_cache.get(port_self)
            torch.testing.assert_close(key, cache[ref_self.key])
            torch.testing.assert_close(value, cache[ref_self.value])
    for h in hooks:
        h.remove()
    assert port_cache.length(port_self) == 3 + 7


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_group_norm_parity_where_the_original_runs(sdpa, impl):
    ref, port = make_pair(16, 2, sdpa=sdpa, group_norm=True, dtype=torch.float64, seed=5, impl=impl)
    x = torch.randn(3, 16, 16, dtype=torch.float64)  # T == n_state
    with original_sdpa(sdpa), torch.no_grad():
        want, _ = ref(x, mask=causal_mask(16, torch.float64))
        got, _ = port(x, mask=causal_mask(16, torch.float64))
    torch.testing.assert_close(got, want, **BITWISE)
    with pytest.raises(RuntimeError, match="T == n_state"):
        port(torch.randn(1, 5, 16, dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLS)
def test_rotary_embedding_and_rotation_layer_parity(impl):
    for dim in (2, 6, 64):
        ref = reference.RotaryEmbedding(dim)
        port = IMPLEMENTATIONS[impl].RotaryEmbedding(dim)
        assert torch.equal(port.inv_freq, ref.inv_freq)
        x = torch.randn(2, 9, 3, dim)
        torch.testing.assert_close(port.rotate_queries_or_keys(x), ref.rotate_queries_or_keys(x), rtol=0, atol=0)
    assert torch.equal(
        IMPLEMENTATIONS[impl].RotaryEmbedding(8, base=500).inv_freq, reference.RotaryEmbedding(8, base=500).inv_freq
    )
    ref_r, port_r = reference.RotationLayer(8), IMPLEMENTATIONS[impl].RotationLayer(8)
    ref_r.reset_parameters()
    port_r.load_state_dict(ref_r.state_dict())
    x = torch.randn(4, 3, 8)
    assert torch.equal(port_r(x), ref_r(x))


def test_state_dict_keys_and_round_trips(tmp_path):
    ref, port = make_pair(64, 4, seed=21, impl="cpp")
    assert list(sorted(port.state_dict())) == list(sorted(ref.state_dict()))
    # Port -> original, in memory.
    fresh = reference.MultiHeadAttention(64, 4)
    fresh.load_state_dict(port.state_dict(), strict=True)
    # C++ writer -> Python torch.load (weights_only) -> original.
    path = os.fspath(tmp_path / "from_cpp.pt")
    port.save(path)
    loaded = torch.load(path, weights_only=True)
    fresh2 = reference.MultiHeadAttention(64, 4)
    fresh2.load_state_dict(loaded, strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded[k], v), k
    # Python torch.save (an OrderedDict with _metadata) -> C++ reader.
    path2 = os.fspath(tmp_path / "from_python.pt")
    torch.save(ref.state_dict(), path2)
    other = rotary_attention.cpp.MultiHeadAttention(64, 4)
    other.load(path2)
    for k, v in other.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    # ...and with pickle protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE opcodes).
    path4 = os.fspath(tmp_path / "from_python_p4.pt")
    torch.save(ref.state_dict(), path4, pickle_protocol=4)
    third = rotary_attention.cpp.MultiHeadAttention(64, 4)
    third.load(path4)
    for k, v in third.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_load_state_dict_is_strict_and_atomic():
    _, port = make_pair(32, 4, seed=2, impl="cpp")
    before = {k: v.clone() for k, v in port.state_dict().items()}
    sd = reference.MultiHeadAttention(32, 4).state_dict()
    bad = dict(sd)
    del bad["key.weight"]
    bad["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match='"key.weight"'):
        port.load_state_dict(bad)
    wrong = dict(sd)
    wrong["query.weight"] = torch.zeros(32, 31)
    with pytest.raises(RuntimeError, match='size mismatch for "query.weight"'):
        port.load_state_dict(wrong)
    for k, v in port.state_dict().items():
        assert torch.equal(v, before[k]), k
    result = port.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["key.weight"] and result.unexpected_keys == ["extra"]


def test_module_conveniences():
    port = rotary_attention.cpp.MultiHeadAttention(32, 4, sdpa=False)
    assert port.train() is port and port.training
    assert port.eval() is port and not port.training
    assert port.to(torch.float64) is port
    assert all(p.dtype == torch.float64 for p in port.parameters())
    assert port.state_dict()["rotary_emb.inv_freq"].dtype == torch.float64
    names = [n for n, _ in port.named_parameters()]
    assert "temperature" in names and "rotary_emb.inv_freq" not in names
    assert port.sdpa is False
    port.sdpa = True
    assert port.sdpa is True
    with pytest.raises(RuntimeError, match="divisible"):
        rotary_attention.cpp.MultiHeadAttention(30, 4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_empty_batch_and_sequence(sdpa, impl):
    port = IMPLEMENTATIONS[impl].MultiHeadAttention(32, 4, sdpa=sdpa).eval()
    for shape in [(0, 5, 32), (2, 0, 32)]:
        out, qk = port(torch.randn(*shape), mask=causal_mask(8))
        assert out.shape == shape
        assert (qk is None) == sdpa


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("device", DEVICES)
def test_multi_head_attention_on_device(device, sdpa, impl):
    """The module moved to the device (mask and cache follow) against the
    original moved there; tolerances allow the device's own matmul rounding."""
    ref, port = make_pair(64, 4, sdpa=sdpa, seed=4, impl=impl)
    ref.to(device)
    port.to(device)
    x = torch.randn(2, 9, 64, device=device)
    cpu_mask = causal_mask(12)
    mask = cpu_mask.to(device)
    with original_sdpa(sdpa), torch.no_grad():
        want, want_qk = ref(x, mask=mask)
        got, got_qk = port(x, mask=mask)
        moved, _ = port(x, mask=cpu_mask)  # the layer moves a CPU mask itself
        cache = IMPLEMENTATIONS[impl].KVCache()
        steps = [port(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(3)]
        hooks_cache, hooks = reference.install_kv_cache_hooks(ref)
        want_steps = [ref(x[:, i : i + 1], mask=mask, kv_cache=hooks_cache)[0] for i in range(3)]
        for h in hooks:
            h.remove()
    assert got.device.type == device
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved, got, rtol=0, atol=0)
    if not sdpa:
        torch.testing.assert_close(got_qk, want_qk, rtol=1e-5, atol=1e-5)
    assert cache.length(port) == 3 and all(s.device.type == device for s in steps)
    for step, want_step in zip(steps, want_steps, strict=True):
        torch.testing.assert_close(step, want_step, rtol=1e-5, atol=1e-5)


def _shifted_by_one(rotate):
    """rotate_queries_or_keys at positions 1..T instead of 0..T-1."""

    def shifted(x):
        padded = torch.cat([torch.zeros_like(x[:, :1]), x], 1)
        return rotate(padded)[:, 1:]

    return shifted


def test_parity_set_up_makes_every_weight_visible():
    """The parity tests see a bug only if the weights let it show. With
    randomize_weights_, R is neither the identity nor orthogonal (an orthogonal
    R cancels in q @ k^T), the temperature is moved, and a dropped or
    transposed rotation, or positions shifted by one, change the original's
    output far beyond rounding."""
    ref = randomize(reference.MultiHeadAttention(64, 4), seed=0).double().eval()
    R = ref.rotation_layer.rotation_matrix.detach().clone()
    eye = torch.eye(16, dtype=torch.float64)
    assert (R - eye).abs().max() > 0.1
    assert (R @ R.T - eye).abs().max() > 0.1
    assert abs(ref.temperature.item() - 16**-0.5) > 0.1
    fresh = reference.MultiHeadAttention(64, 4).double().state_dict()
    for name, value in ref.state_dict().items():
        if name != "rotary_emb.inv_freq":
            assert not torch.equal(value, fresh[name]), name
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    mask = causal_mask(7, torch.float64)
    for sdpa in (True, False):
        with original_sdpa(sdpa), torch.no_grad():
            base = ref(x, mask=mask)[0]
            variants = {}
            for name, matrix in {"dropped": eye, "transposed": R.T}.items():
                ref.rotation_layer.rotation_matrix.copy_(matrix)
                variants[name] = ref(x, mask=mask)[0]
                ref.rotation_layer.rotation_matrix.copy_(R)
            rotate = ref.rotary_emb.rotate_queries_or_keys
            ref.rotary_emb.rotate_queries_or_keys = _shifted_by_one(rotate)
            variants["positions + 1"] = ref(x, mask=mask)[0]
            ref.rotary_emb.rotate_queries_or_keys = rotate
        for name, out in variants.items():
            assert (out - base).abs().max() > 1e-3, (sdpa, name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_train_false_requires_grad_and_detached_state_dict(sdpa, impl):
    ref, port = make_pair(32, 4, sdpa=sdpa, dropout_rate=0.5, seed=6, impl=impl)
    x = torch.randn(2, 5, 32)
    port.train(False)
    assert not port.training
    with original_sdpa(sdpa), torch.no_grad():
        want = ref(x)[0]  # ref is in eval mode: no dropout
        assert torch.equal(port(x)[0], want) and torch.equal(port(x)[0], want)
    assert port.requires_grad_(False) is port
    assert not any(p.requires_grad for p in port.parameters())
    assert port(x)[0].grad_fn is None
    port.requires_grad_(True)
    assert all(p.requires_grad for p in port.parameters())
    state = port.state_dict()
    assert not any(t.requires_grad for t in state.values())
    params = dict(port.named_parameters())
    kept = port.state_dict(keep_vars=True)
    assert all(kept[n] is params[n] or kept[n].data_ptr() == params[n].data_ptr() for n in params)
    assert all(kept[n].requires_grad for n in params)


@pytest.mark.parametrize("impl", IMPLS)
def test_sdpa_path_ignores_mask_values_and_has_no_dropout(impl):
    """The original's SDPA path only asks whether a mask is given (causal when
    T > 1), and applies no dropout even in training; the port does the same."""
    ref, port = make_pair(32, 4, sdpa=True, dropout_rate=0.5, seed=8, impl=impl)
    ref.train()
    port.train()
    x = torch.randn(2, 6, 32)
    causal = causal_mask(6)
    random_values = torch.randn(6, 6)
    with original_sdpa(True), torch.no_grad():
        want = ref(x, mask=causal)[0]
        assert torch.equal(port(x, mask=causal)[0], want)
        assert torch.equal(port(x, mask=random_values)[0], want)
        assert torch.equal(port(x, mask=causal)[0], port(x, mask=causal)[0])
        # T == 1: no causal mask at all, whatever the mask (the original's n_ctx > 1).
        x1 = torch.randn(2, 1, 32)
        xa = torch.randn(2, 4, 32)
        assert torch.equal(port(x1, xa=xa, mask=causal)[0], ref(x1, xa=xa, mask=None)[0])
        assert not torch.equal(port(x1, xa=xa, mask=causal)[0], port(x1, xa=xa[:, :1], mask=causal)[0])


def test_strict_loading_from_a_file_is_all_or_nothing(tmp_path):
    ref, port = make_pair(32, 4, seed=2, impl="cpp")
    before = {k: v.clone() for k, v in port.state_dict().items()}
    bad = dict(randomize(reference.MultiHeadAttention(32, 4), seed=9).state_dict())
    bad["value.bias"] = torch.zeros(31)  # every key present, one shape wrong
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="value.bias"):
        port.load(str(tmp_path / "bad.pt"))
    for k, v in port.state_dict().items():
        assert torch.equal(v, before[k]), k
    good = randomize(reference.MultiHeadAttention(32, 4), seed=9).state_dict()
    torch.save(good, tmp_path / "good.pt")
    port.load(str(tmp_path / "good.pt"))
    for k, v in port.state_dict().items():
        assert torch.equal(v, good[k]), k
