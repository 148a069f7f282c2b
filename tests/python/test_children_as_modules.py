"""The nn.Module under what the ecosystem does to its children: hooks (on a
child, global), peft's LoRA, quantize_dynamic, replaced children, the
original's dict kv_cache, a beam's shared audio features and KVCache.reorder.
Each case is compared with the original layer given the same treatment, in the
same process."""

import contextlib

import pytest
import torch
from torch import nn

import rotary_attention
from conftest import IMPLEMENTATIONS, IMPLS, causal_mask, grad_tolerances, make_pair, original_sdpa
from rotary_attention import reference

N_STATE, N_HEAD = 32, 4
EXACT = dict(rtol=0, atol=0)


class Holder(nn.Module):
    """A model around one attention layer (peft and quantize_dynamic take models)."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, xa=None, mask=None):
        return self.attn(x, xa, mask)[0]


class Shifted(nn.Module):
    """A wrapper around a child: what replacing a submodule looks like."""

    def __init__(self, inner, shift):
        super().__init__()
        self.inner = inner
        self.shift = shift

    def forward(self, x):
        return self.inner(x) + self.shift


def _fresh_linear(old, bias, seed):
    new = nn.Linear(old.in_features, old.out_features, bias=bias).to(old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if bias:
            new.bias.copy_(torch.randn(old.out_features, generator=torch.Generator().manual_seed(seed)))
    return new


def _layer_norm_eps(m):
    norm = nn.LayerNorm(m.n_state, eps=1e-3).to(m.attn_ln.weight.dtype)
    norm.load_state_dict(m.attn_ln.state_dict())
    m.attn_ln = norm


# Each treatment is applied the same way to the original and to the port.
TREATMENTS = {
    "forward hook on out": lambda m: m.out.register_forward_hook(lambda mod, args, out: out * 2 + 1),
    "forward pre-hook on query": lambda m: m.query.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,)),
    "forward hook on key": lambda m: m.key.register_forward_hook(lambda mod, args, out: out.flip(1)),
    "pre-hook with kwargs on value": lambda m: m.value.register_forward_pre_hook(
        lambda mod, args, kwargs: ((args[0] + 0.25,), kwargs), with_kwargs=True
    ),
    "forward hook on attn_ln": lambda m: m.attn_ln.register_forward_hook(lambda mod, args, out: out + 0.1),
    "forward hook on rotation_layer": lambda m: m.rotation_layer.register_forward_hook(
        lambda mod, args, out: out * 1.5
    ),
    "a wrapper around key": lambda m: setattr(m, "key", Shifted(m.key, 0.3)),
    "a wrapper around rotation_layer": lambda m: setattr(m, "rotation_layer", Shifted(m.rotation_layer, 0.2)),
    "key replaced by a Linear with a bias": lambda m: setattr(m, "key", _fresh_linear(m.key, True, 5)),
    "out replaced by a Linear without a bias": lambda m: setattr(m, "out", _fresh_linear(m.out, False, 0)),
    "attn_ln with another eps": _layer_norm_eps,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("treatment", list(TREATMENTS))
def test_treated_children_match_the_original_given_the_same_treatment(treatment, cross, sdpa, dtype):
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=dtype, seed=3)
    x = torch.randn(2, 5, N_STATE, dtype=dtype)
    xa = torch.randn(2, 7, N_STATE, dtype=dtype) if cross else None
    mask = None if cross else causal_mask(8, dtype)  # (Whisper's cross-attention takes no mask)
    with original_sdpa(sdpa):
        untreated = port(x, xa, mask)[0]
        for m in (ref, port):
            TREATMENTS[treatment](m)
        want, want_qk = ref(x, xa, mask)
        got, got_qk = port(x, xa, mask)
    assert not torch.equal(got, untreated), "the treatment must change the output"
    torch.testing.assert_close(got, want, **EXACT)
    if not sdpa:
        torch.testing.assert_close(got_qk, want_qk, **EXACT)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("treatment", ["forward hook on key", "a wrapper around rotation_layer"])
def test_treated_children_gradients_match_the_original(treatment, sdpa):
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=torch.float64, seed=4)
    for m in (ref, port):
        TREATMENTS[treatment](m)
    x = torch.randn(2, 5, N_STATE, dtype=torch.float64, requires_grad=True)
    with original_sdpa(sdpa):
        grads = []
        for m in (ref, port):
            m.zero_grad()
            x.grad = None
            m(x, mask=causal_mask(8, torch.float64))[0].square().sum().backward()
            grads.append({"x": x.grad.clone(), **{n: p.grad for n, p in m.named_parameters() if p.grad is not None}})
    assert grads[0].keys() == grads[1].keys()
    rtol, atol = grad_tolerances(sdpa)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("kind", ["full backward hook on query", "backward pre-hook on out"])
def test_backward_hooks_on_children_run_as_on_the_original(kind, sdpa):
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=torch.float64, seed=5)
    calls = {"original": 0, "port": 0}
    x = torch.randn(2, 5, N_STATE, dtype=torch.float64, requires_grad=True)
    grads = {}
    for label, m in (("original", ref), ("port", port)):

        def scale(module, grad, *rest, label=label):
            calls[label] += 1
            return (grad[0] * 3.0,)

        if kind == "full backward hook on query":
            m.query.register_full_backward_hook(scale)  # (module, grad_input, grad_output)
        else:
            m.out.register_full_backward_pre_hook(scale)  # (module, grad_output)
        x.grad = None
        with original_sdpa(sdpa):
            m(x, mask=causal_mask(8, torch.float64))[0].square().sum().backward()
        grads[label] = {"x": x.grad.clone(), **{n: p.grad for n, p in m.named_parameters() if p.grad is not None}}
    assert calls == {"original": 1, "port": 1}
    rtol, atol = grad_tolerances(sdpa)
    for name, g in grads["original"].items():
        torch.testing.assert_close(grads["port"][name], g, rtol=rtol, atol=atol, msg=name)


@contextlib.contextmanager
def global_forward_hook(hook):
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_a_global_hook_sees_the_children_called_in_the_original_order(sdpa):
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, seed=6, dropout_rate=0.0)
    x, mask = torch.randn(2, 5, N_STATE), causal_mask(8)
    calls, outs = {}, {}
    for label, m in (("original", ref), ("port", port)):
        names = {child: name for name, child in m.named_modules()}
        seen = calls[label] = []

        def record(mod, args, out, seen=seen, names=names):
            seen.append(names.get(mod))

        with original_sdpa(sdpa), global_forward_hook(record):
            outs[label] = m(x, mask=mask)[0]
    torch.testing.assert_close(outs["port"], outs["original"], **EXACT)
    assert calls["port"] == calls["original"]
    want = ["attn_ln", "query", "key", "value", "rotation_layer", "rotation_layer"]
    assert calls["original"] == want + ([] if sdpa else ["dropout"]) + ["out", ""]


class HalvingDropout(nn.Module):
    """A replaced dropout child: deterministic, so both layers draw the same."""

    def forward(self, w):
        return w * 0.5


def test_a_replaced_dropout_child_runs_on_the_explicit_path_in_training():
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=False, seed=7)
    for m in (ref, port):
        m.dropout = HalvingDropout()
        m.train()
    x, mask = torch.randn(2, 5, N_STATE), causal_mask(8)
    with original_sdpa(False):
        want, want_qk = ref(x, mask=mask)
        got, got_qk = port(x, mask=mask)
    torch.testing.assert_close(got, want, **EXACT)
    torch.testing.assert_close(got_qk, want_qk, **EXACT)


def _ops_called(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_plain_children_take_one_operator_call_and_any_hook_the_faithful_road():
    _, port = make_pair(N_STATE, N_HEAD, seed=8)
    x = torch.randn(1, 4, N_STATE)
    ops = _ops_called(lambda: port(x))
    assert "rotary_attention::multi_head_attention" in ops and "rotary_attention::attention_core" not in ops
    handle = port.value.register_forward_hook(lambda mod, args, out: None)  # a hook that changes nothing
    ops = _ops_called(lambda: port(x))
    handle.remove()
    assert "rotary_attention::attention_core" in ops and "rotary_attention::multi_head_attention" not in ops
    with global_forward_hook(lambda mod, args, out: None):
        assert "rotary_attention::attention_core" in _ops_called(lambda: port(x))
    assert "rotary_attention::multi_head_attention" in _ops_called(lambda: port(x))


def _lora(model, seed):
    import peft  # (here: importing it, and transformers, takes 8 s of a worker's start)

    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False
    )
    return peft.get_peft_model(model, config)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_peft_lora_outputs_and_gradients_match_the_original(sdpa, cross):
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=torch.float64, seed=9)
    x = torch.randn(2, 5, N_STATE, dtype=torch.float64)
    xa = torch.randn(2, 7, N_STATE, dtype=torch.float64) if cross else None
    base = port(x, xa)[0]
    lora_ref, lora_port = _lora(Holder(ref), 0).double(), _lora(Holder(port), 1).double()
    lora_port.load_state_dict(lora_ref.state_dict())
    assert type(lora_port.base_model.model.attn.query).__module__.startswith("peft")
    with original_sdpa(sdpa):
        want, got = lora_ref(x, xa), lora_port(x, xa)
        assert (got - base).abs().max() > 1e-3, "LoRA must change the output"
        torch.testing.assert_close(got, want, **EXACT)
        grads = []
        for m, out in ((lora_ref, want), (lora_port, got)):
            out.square().sum().backward()
            grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[1].keys() == grads[0].keys() and any("lora_B" in n for n in grads[0])
    rtol, atol = grad_tolerances(sdpa)
    for name, g in grads[0].items():
        assert g is not None and grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], g, rtol=rtol, atol=atol, msg=name)


def _with_plain_linears(m):
    """The original's Linear children (Whisper's casting subclass) as nn.Linear,
    which quantize_dynamic({nn.Linear}) swaps; same weights."""
    for name in ("query", "key", "value", "out"):
        old = getattr(m, name)
        setattr(m, name, _fresh_linear(old, old.bias is not None, 0))
        if old.bias is not None:
            getattr(m, name).bias.data.copy_(old.bias)
    return m


def test_quantize_dynamic_runs_the_quantized_linears_as_the_original():
    ref, port = make_pair(N_STATE, N_HEAD, seed=10)
    x = torch.randn(2, 5, N_STATE)
    float_out = port(x)[0]
    quantized = [
        torch.ao.quantization.quantize_dynamic(Holder(m), {nn.Linear}, dtype=torch.qint8)
        for m in (_with_plain_linears(ref), port)
    ]
    assert "quantized" in type(quantized[1].attn.query).__module__
    want, got = quantized[0](x), quantized[1](x)
    assert not torch.equal(got, float_out)
    torch.testing.assert_close(got, want, **EXACT)


def _hooked_decode(layers, xs, xa, mask, n_text_ctx=16):
    """Decodes xs (a list of chunks) through self- and cross-attention layers
    over a dict filled by Whisper's hooks; returns every step's output."""
    self_attn, cross_attn = layers
    cache, hooks = reference.install_kv_cache_hooks(
        nn.ModuleList(layers), n_text_ctx=n_text_ctx, layer_type=type(self_attn)
    )
    outs = []
    for part in xs:
        h = self_attn(part, mask=mask, kv_cache=cache)[0]
        outs.append(cross_attn(h, xa, kv_cache=cache)[0])
    for h in hooks:
        h.remove()
    return outs, cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_dict_kv_cache_filled_by_whisper_hooks_equals_the_original_bitwise(sdpa, dtype):
    pairs = [make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=dtype, seed=s) for s in (11, 12)]
    refs, ports = [p[0] for p in pairs], [p[1] for p in pairs]
    x = torch.randn(2, 8, N_STATE, dtype=dtype)
    xa = torch.randn(2, 20, N_STATE, dtype=dtype)  # longer than n_text_ctx: Whisper's hooks' cross test
    parts = [x[:, :3]] + [x[:, i : i + 1] for i in range(3, 8)]
    mask = causal_mask(16, dtype)
    with original_sdpa(sdpa), torch.no_grad():
        want, want_cache = _hooked_decode(refs, parts, xa, mask)
        got, got_cache = _hooked_decode(ports, parts, xa, mask)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, **EXACT, msg=f"step {i}")
    torch.testing.assert_close(got_cache[ports[0].key], want_cache[refs[0].key], **EXACT)
    assert got_cache[ports[0].key].shape[1] == 8


def test_dict_kv_cache_without_hooks_replaces_the_keys_as_the_original():
    ref, port = make_pair(N_STATE, N_HEAD, seed=13)
    x, xa = torch.randn(2, 1, N_STATE), torch.randn(2, 6, N_STATE)
    keys, values = torch.randn(2, 6, N_STATE), torch.randn(2, 6, N_STATE)
    want = ref(x, xa, kv_cache={ref.key: keys, ref.value: values})[0]
    got = port(x, xa, kv_cache={port.key: keys, port.value: values})[0]
    torch.testing.assert_close(got, want, **EXACT)


def test_unsupported_caches_are_clear_errors():
    _, port = make_pair(N_STATE, N_HEAD, seed=14)
    x = torch.randn(1, 2, N_STATE)
    with pytest.raises(TypeError, match="kv_cache must be a rotary_attention.KVCache or a dict"):
        port(x, kv_cache=[])
    absolute = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True)
    with pytest.raises(ValueError, match="absolute_positions=True needs a rotary_attention.KVCache"):
        absolute(x, kv_cache={})
    port.rotation_layer.register_forward_hook(lambda mod, args, out: out)
    with pytest.raises(ValueError, match="KVCache needs the library's own RotaryEmbedding and RotationLayer"):
        port(x, kv_cache=rotary_attention.KVCache())


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_lora_layers_decode_over_a_kv_cache_as_the_original_over_whisper_hooks(sdpa):
    pairs = [make_pair(N_STATE, N_HEAD, sdpa=sdpa, seed=s) for s in (15, 16)]
    lora_refs = [_lora(Holder(ref), 2) for ref, _ in pairs]
    lora_ports = [_lora(Holder(port), 3) for _, port in pairs]
    for lora_port, lora_ref in zip(lora_ports, lora_refs, strict=True):
        lora_port.load_state_dict(lora_ref.state_dict())
    refs = [m.base_model.model.attn for m in lora_refs]
    ports = [m.base_model.model.attn for m in lora_ports]
    x, xa, mask = torch.randn(2, 6, N_STATE), torch.randn(2, 20, N_STATE), causal_mask(16)
    parts = [x[:, :2]] + [x[:, i : i + 1] for i in range(2, 6)]
    with original_sdpa(sdpa), torch.no_grad():
        want, _ = _hooked_decode(refs, parts, xa, mask)
        cache = rotary_attention.KVCache()
        got = []
        for part in parts:
            h = ports[0](part, mask=mask, kv_cache=cache)[0]
            got.append(ports[1](h, xa, kv_cache=cache)[0])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, **EXACT, msg=f"step {i}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_audio_features_of_batch_1_serve_every_row_of_a_beam(impl, sdpa, cached):
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, seed=17, impl=impl)
    x, xa = torch.randn(3, 2, N_STATE), torch.randn(1, 7, N_STATE)
    with original_sdpa(sdpa):
        want = ref(x, xa.expand(3, -1, -1))[0]  # the original, given one copy per row
        with pytest.raises(RuntimeError):
            ref(x, xa)  # the original's view cannot broadcast (README: What differs)
    cache = IMPLEMENTATIONS[impl].KVCache() if cached else None
    # (Not bitwise: the original projects 3 copies of xa, a GEMM of other sizes.)
    for step in range(2 if cached else 1):
        torch.testing.assert_close(port(x, xa, kv_cache=cache)[0], want, rtol=1e-6, atol=1e-6, msg=f"step {step}")
    if cached:
        assert cache.get(port)[0].shape[0] == 1  # stored once for the beam
    with pytest.raises(RuntimeError, match=r"xa must have x's batch size 3 or 1"):
        port(x, torch.randn(2, 7, N_STATE))


def test_audio_features_of_batch_1_on_the_faithful_road():
    ref, port = make_pair(N_STATE, N_HEAD, seed=18)
    for m in (ref, port):
        TREATMENTS["forward hook on key"](m)
    x, xa = torch.randn(3, 2, N_STATE), torch.randn(1, 7, N_STATE)
    torch.testing.assert_close(port(x, xa)[0], ref(x, xa.expand(3, -1, -1))[0], rtol=1e-6, atol=1e-6)


def _cache_for(impl, kind):
    faces = IMPLEMENTATIONS[impl]
    if kind == "static":
        return faces.KVCache(16, static=True)
    return faces.KVCache(4) if kind == "capacity" else faces.KVCache()


REORDER_CASES = [
    ("module", "default"),
    ("module", "capacity"),
    ("module", "static"),
    ("cpp", "default"),
    ("cpp", "capacity"),
]


@pytest.mark.parametrize("impl,kind", REORDER_CASES, ids=["-".join(c) for c in REORDER_CASES])
@pytest.mark.parametrize("order", [[2, 0, 0], [1, 2], [0, 1, 2], [2, 1, 0, 0]], ids=str)
def test_reorder_then_decode_equals_decoding_the_reordered_rows_from_scratch(impl, kind, order):
    absolute = kind == "static"
    faces = IMPLEMENTATIONS[impl]
    self_attn = faces.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=absolute).eval()
    cross_attn = faces.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=absolute).eval()
    for m in (self_attn, cross_attn):
        m.load_state_dict(reference.randomize_weights_(reference.MultiHeadAttention(N_STATE, N_HEAD), 19).state_dict())
    mask = causal_mask(16)
    prompt, xa = torch.randn(3, 3, N_STATE), torch.randn(1, 7, N_STATE)
    steps = torch.randn(len(order), 2, N_STATE)

    def step(x, cache):
        h = self_attn(x, mask=mask, kv_cache=cache)[0]
        return cross_attn(h, xa, kv_cache=cache)[0]

    with torch.no_grad():
        cache = _cache_for(impl, kind)
        step(prompt, cache)
        before = cache.get(self_attn)[0] if impl == "module" and kind == "static" else None
        buffer = cache._entry(self_attn).key if before is not None else None
        cache.reorder(torch.tensor(order))
        got = [step(steps[:, t : t + 1], cache) for t in range(2)]
        fresh = _cache_for(impl, kind)
        step(prompt[order], fresh)
        want = [step(steps[:, t : t + 1], fresh) for t in range(2)]
    for t in range(2):
        torch.testing.assert_close(got[t], want[t], rtol=1e-6, atol=1e-6, msg=f"step {t}")
    assert cache.length(self_attn) == 5
    if buffer is not None and len(order) == 3:
        assert cache._entry(self_attn).key is buffer  # in place: a compiled step keeps its inputs


@pytest.mark.parametrize("impl", IMPLS)
def test_reorder_refuses_bad_indices_and_changes_nothing(impl):
    faces = IMPLEMENTATIONS[impl]
    layer = faces.MultiHeadAttention(N_STATE, N_HEAD).eval()
    cache = faces.KVCache()
    with torch.no_grad():
        layer(torch.randn(2, 3, N_STATE), kv_cache=cache)
    before = cache.get(layer)[0].clone()
    with pytest.raises((IndexError, RuntimeError), match=r"indices must be in \[0, 2\)"):
        cache.reorder(torch.tensor([0, 2]))
    with pytest.raises((ValueError, RuntimeError), match="1-D"):
        cache.reorder(torch.tensor([[0, 1]]))
    torch.testing.assert_close(cache.get(layer)[0], before, **EXACT)
