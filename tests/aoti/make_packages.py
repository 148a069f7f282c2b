"""Makes the AOTInductor packages and the cases the C++ programs run against them
(examples/run_aoti.cpp, examples/decode_aoti.cpp; ctest drives them):

- block.pt2: a two-block decoder (self-attention with a causal mask, then cross-attention
  over audio features), exported with dynamic batch, sequence and audio lengths;
  block_cases.pt: inputs at several batch sizes and sequence lengths and the outputs of
  the same model run eagerly in Python.
- decode.pt2: one decode step of two self-attention layers with a static cache passed in
  (StaticDecodeStep), batch 2, capacity 32; decode_cases.pt: the tokens, an empty cache,
  and the outputs of eager decoding with the default KVCache.

    python tests/aoti/make_packages.py --out DIR [--device cpu|cuda]
"""

import argparse
import os

import torch
from torch import nn

import rotary_attention

N_STATE, N_HEAD = 64, 4
TOLERANCE = 1e-5  # fp32; AOTInductor's generated kernels round differently from eager ATen


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD)
        self.cross_attn = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD)

    def forward(self, x, xa, mask):
        x = self.attn(x, mask=mask)[0]
        return self.cross_attn(x, xa=xa)[0]


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(2))

    def forward(self, x, xa, mask):
        for block in self.blocks:
            x = block(x, xa, mask)
        return x


def randomized(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def make_block(out, device):
    model = randomized(Decoder(), seed=1).to(device)
    mask = torch.empty(64, 64, device=device).fill_(float("-inf")).triu_(1)
    example = (torch.randn(2, 5, N_STATE, device=device), torch.randn(2, 9, N_STATE, device=device), mask)
    batch, seq, audio = (
        torch.export.Dim("batch", max=16),
        torch.export.Dim("seq", min=2, max=64),
        torch.export.Dim("audio", max=128),
    )
    rotary_attention.export_aoti_package(
        model, example, os.path.join(out, "block.pt2"),
        dynamic_shapes={"x": {0: batch, 1: seq}, "xa": {0: batch, 1: audio}, "mask": None},
    )  # fmt: skip
    cases = {"tolerance": torch.tensor(TOLERANCE)}
    with torch.no_grad():
        for i, (b, t, s) in enumerate([(1, 2, 1), (3, 7, 20), (2, 64, 128), (5, 33, 9)]):
            x, xa = torch.randn(b, t, N_STATE, device=device), torch.randn(b, s, N_STATE, device=device)
            cases.update({f"case{i}.input0": x, f"case{i}.input1": xa, f"case{i}.input2": mask,
                          f"case{i}.output0": model(x, xa, mask)})  # fmt: skip
    rotary_attention.save_file({k: v.cpu() for k, v in cases.items()}, os.path.join(out, "block_cases.pt"))


def make_decode(out, device, batch=2, capacity=32, steps=20):
    layers = []
    for seed in (2, 3):
        layer = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True)
        layers.append(randomized(layer, seed))
    step = rotary_attention.StaticDecodeStep(layers).to(device).eval()
    cache = step.empty_cache(batch, capacity, device=device)
    token = torch.randn(batch, 1, N_STATE, device=device)
    rotary_attention.export_aoti_package(step, (token, *cache), os.path.join(out, "decode.pt2"))
    tokens = torch.randn(batch, steps, N_STATE, device=device)
    eager = rotary_attention.KVCache()
    with torch.no_grad():
        expected = []
        for i in range(steps):
            x = tokens[:, i : i + 1]
            for layer in layers:
                x = layer(x, kv_cache=eager)[0]
            expected.append(x)
    cases = {"tokens": tokens, "expected": torch.cat(expected, 1), "tolerance": torch.tensor(TOLERANCE)}
    cases.update({f"cache{j}": t for j, t in enumerate(step.empty_cache(batch, capacity, device=device))})
    rotary_attention.save_file({k: v.cpu() for k, v in cases.items()}, os.path.join(out, "decode_cases.pt"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["block", "decode"])
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    if args.only in (None, "block"):
        make_block(args.out, args.device)
    if args.only in (None, "decode"):
        make_decode(args.out, args.device)
    print(f"packages and cases written to {args.out}")


if __name__ == "__main__":
    main()
