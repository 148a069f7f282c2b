"""One layer in eval mode shared by threads, each decoding with its own KVCache:
the results equal the serial ones (the operators release the GIL, so the
threads do run at the same time)."""

import threading

import pytest
import torch

from conftest import IMPLEMENTATIONS, IMPLS, causal_mask, randomize
from rotary_attention import reference


@pytest.mark.parametrize("impl", IMPLS)
def test_threads_with_their_own_caches_equal_serial_decoding(impl):
    ns = IMPLEMENTATIONS[impl]
    ref = randomize(reference.MultiHeadAttention(64, 4), seed=3)
    layer = ns.MultiHeadAttention(64, 4, absolute_positions=True)
    layer.load_state_dict(ref.state_dict())
    layer.eval()
    mask = causal_mask(12)
    inputs = [torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(i)) for i in range(8)]

    def decode(x):
        cache = ns.KVCache()
        with torch.no_grad():
            return torch.cat([layer(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(x.shape[1])], 1)

    serial = [decode(x) for x in inputs]
    results = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs))

    def work(i):
        barrier.wait()
        results[i] = decode(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial, strict=True):
        assert torch.equal(got, want)
