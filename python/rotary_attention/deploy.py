"""Deployment after TorchScript: torch.export, then AOTInductor packages that a C++
program runs with `torch::inductor::AOTIModelPackageLoader` (linked to
RotaryAttention::rotary_attention, so that the operators are registered)."""

import torch
from torch import Tensor, nn

from .layers import KVCache


def export_aoti_package(model: nn.Module, args: tuple, path, dynamic_shapes=None) -> str:
    """`torch.export` of `model` on `args` (with `dynamic_shapes` as torch.export takes
    them), decomposed, then compiled by AOTInductor into the package `path` (.pt2).

    The decomposition turns `multi_head_attention` (CompositeImplicitAutograd) into ATen
    operators, `rotary` and (a decode step over a cache) `decode_attention`, and writes a
    static cache's buffers as visible mutations; `rotary` and `decode_attention` stay one
    node each, with their own kernels, which AOTInductor calls through its proxy executor
    (it finds them in the dispatcher when the package is loaded)."""
    program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes).run_decompositions()
    # A dynamic size may be 1 (a batch of one) when the package checks its inputs
    # (AOTI_RUNTIME_CHECK_INPUTS=1); export's own lower bound for dynamic sizes is 2.
    return torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs={"aot_inductor.check_lowerbound": False}
    )


def static_cache_over(buffers: dict) -> KVCache:
    """A static KVCache over tensors the caller owns: `{layer: (key_buffer, value_buffer,
    filled)}`, buffers (B, capacity, n_state) in the layer's dtype holding zeros where
    nothing is written yet, `filled` an int64 scalar tensor (the steps cached). The layers
    write into them in place. For a decode step exported with its cache as inputs, which
    a C++ loop then owns (see `StaticDecodeStep`)."""
    capacities = {key.shape[1] for key, _, _ in buffers.values()}
    if len(capacities) != 1:
        raise ValueError(f"static_cache_over: the buffers' capacities differ: {sorted(capacities)}")
    cache = KVCache(capacities.pop(), static=True)
    for layer, (key, value, filled) in buffers.items():
        cache._adopt(layer, key, value, filled)
    return cache


class StaticDecodeStep(nn.Module):
    """One decode step of a stack of self-attention layers (`absolute_positions=True`)
    whose static cache is passed in: `forward(x, key_0, value_0, filled_0, key_1, ...)`
    returns the stack's output for x (B, T, n_state) and writes each layer's new keys and
    values into its buffers and advances its `filled`, in place. Exported (and compiled
    by AOTInductor) once, it serves every step: shapes do not change."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, *cache: Tensor) -> Tensor:
        if len(cache) != 3 * len(self.layers):
            raise ValueError(f"StaticDecodeStep: expected (key, value, filled) for {len(self.layers)} layers")
        buffers = {layer: tuple(cache[3 * i : 3 * i + 3]) for i, layer in enumerate(self.layers)}
        kv_cache = static_cache_over(buffers)
        for layer in self.layers:
            x = layer(x, kv_cache=kv_cache)[0]
        return x

    def empty_cache(self, batch: int, capacity: int, dtype=torch.float32, device="cpu") -> list[Tensor]:
        """Zeroed buffers and counters for every layer, in forward's order."""
        out = []
        for layer in self.layers:
            shape = (batch, capacity, layer.n_state)
            out += [torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                    torch.zeros((), dtype=torch.long, device=device)]  # fmt: skip
        return out
