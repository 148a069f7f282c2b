"""Python half of scripts/demo.sh: the original layer, its weights, an input,
a token-by-token decode driven by Whisper's hooks, and the Python timings."""

import statistics
import sys
import time

import torch

from rotary_attention import reference

N_STATE, N_HEAD, B, T, N_TOKENS, N_TEXT_CTX = 512, 8, 2, 100, 16, 448


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(out_dir):
    torch.manual_seed(0)
    model = reference.randomize_weights_(reference.MultiHeadAttention(N_STATE, N_HEAD), seed=0).eval()
    torch.save(model.state_dict(), f"{out_dir}/weights.pt")

    x = torch.randn(B, T, N_STATE)
    tokens = torch.randn(B, N_TOKENS, N_STATE)
    mask = torch.empty(N_TEXT_CTX, N_TEXT_CTX).fill_(float("-inf")).triu_(1)

    def decode():
        cache, hooks = reference.install_kv_cache_hooks(model, n_text_ctx=N_TEXT_CTX)
        outs = [model(tokens[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(N_TOKENS)]
        for h in hooks:
            h.remove()
        return torch.cat(outs, 1)

    with torch.no_grad():
        out = model(x, mask=mask)[0]
        decode_out = decode()
        forward_ms = median_ms(lambda: model(x, mask=mask), 20)
        decode_ms = median_ms(decode, 10)

    torch.save(
        {
            "config": torch.tensor([N_STATE, N_HEAD, 1]),
            "x": x,
            "mask": mask,
            "out": out,
            "tokens": tokens,
            "decode_out": decode_out,
            "python_forward_ms": torch.tensor(forward_ms, dtype=torch.float64),
            "python_decode_ms": torch.tensor(decode_ms, dtype=torch.float64),
        },
        f"{out_dir}/io.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1])
