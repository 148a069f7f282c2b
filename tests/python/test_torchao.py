"""torchao (the quantization library PyTorch points to) on models holding the layer:
`quantize_` swaps the Linear weights for tensor subclasses, which only the children's
own forward can use, so the layer takes the faithful road (children called as modules)
and gives the original's outputs under the same treatment."""

import pytest
import torch
from torch import nn
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

import rotary_attention
from conftest import causal_mask
from rotary_attention import reference

N_STATE, N_HEAD = 64, 4
CONFIGS = {
    "int8 weights": Int8WeightOnlyConfig,
    "int8 dynamic activations and weights": Int8DynamicActivationInt8WeightConfig,
}


class Block(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.attn = cls(N_STATE, N_HEAD)
        self.cross_attn = cls(N_STATE, N_HEAD)
        self.mlp = nn.Linear(N_STATE, N_STATE)

    def forward(self, x, xa, mask, kv_cache=None):
        x = self.attn(x, mask=mask, kv_cache=kv_cache)[0]
        return self.mlp(self.cross_attn(x, xa, kv_cache=kv_cache)[0])


def quantized_pair(config):
    torch.manual_seed(0)
    original = reference.randomize_weights_(Block(reference.MultiHeadAttention), 1).eval()
    port = Block(rotary_attention.MultiHeadAttention).eval()
    port.load_state_dict(original.state_dict())
    quantize_(original, config())
    quantize_(port, config())
    return original, port


def calls(op, fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == op)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_quantized_layers_give_the_original_s_outputs(config):
    original, port = quantized_pair(CONFIGS[config])
    assert type(port.attn.query.weight) is not nn.Parameter  # torchao's subclass: the case at hand
    x, xa = torch.randn(2, 6, N_STATE), torch.randn(2, 9, N_STATE)
    with torch.no_grad():
        for mask in (None, causal_mask(6)):
            torch.testing.assert_close(port(x, xa, mask), original(x, xa, mask), rtol=0, atol=0)
        # The faithful road: one attention_core per layer, no multi_head_attention.
        assert calls("rotary_attention::multi_head_attention", lambda: port(x, xa, None)) == 0
        assert calls("rotary_attention::attention_core", lambda: port(x, xa, None)) == 2


@pytest.mark.parametrize("config", list(CONFIGS))
def test_quantized_layers_decode_over_a_kv_cache_as_the_original_over_whisper_s_hooks(config):
    original, port = quantized_pair(CONFIGS[config])
    x, xa = torch.randn(2, 8, N_STATE), torch.randn(2, 9, N_STATE)
    mask = causal_mask(8)
    cache, hooks = reference.install_kv_cache_hooks(original, n_text_ctx=8)
    kv = rotary_attention.KVCache()
    with torch.no_grad():
        want = [original(x[:, :3], xa, mask, cache)] + [original(x[:, i : i + 1], xa, mask, cache) for i in range(3, 8)]
        got = [port(x[:, :3], xa, mask, kv)] + [port(x[:, i : i + 1], xa, mask, kv) for i in range(3, 8)]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), rtol=0, atol=0)
