"""Mutated and crafted weight files against the library's readers.

Every case is a file a stranger could send: byte flips, insertions, deletions and
truncations of a real torch.save / safetensors file (also inside the zip's data.pkl,
re-zipped so that the mutation reaches the unpickler), and files crafted with out-of-range
sizes, strides, offsets, storage sizes, dtypes and header fields. Each load must return
tensors or raise a RuntimeError whose message starts with "load_tensors:" (or
"load_state_dict:"), never crash or hang, never try to allocate more than the file holds
(the address space is capped, so such an attempt would fail with an allocation error,
which counts as a failure), and a module must be unchanged after every failed load.

Run by test_weight_file_fuzzing.py in a subprocess (a crash or hang fails the test with the
case that caused it); run it directly for a longer campaign:
    python tests/python/weight_file_fuzzer.py --cases 100000 --seed 7
"""

import argparse
import collections
import io
import json
import os
import pickle
import random
import resource
import struct
import sys
import tempfile
import time
import zipfile

import torch

import rotary_attention
import rotary_attention.reference

STORAGE_TYPES = ["FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
                 "IntStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage"]  # fmt: skip
ITEM_SIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
             "LongStorage": 8, "IntStorage": 4, "ByteStorage": 1, "BoolStorage": 1,
             "ComplexFloatStorage": 8}  # fmt: skip
SAFETENSORS_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
                      "F8_E4M3", "C64", "X", ""]  # fmt: skip
BIG = [2**31 - 1, 2**31, 2**32, 2**33, 2**40, 2**61, 2**62, 2**63 - 1]
ODD_INTS = [-(2**63), -(2**31), -2, -1, 0, 1, 2, 3, 7, 8, 64] + BIG


class NotAStorage:
    """A class that pickles as the global torch.NotAStorage: not a storage type."""


NotAStorage.__module__ = "torch"
torch.NotAStorage = NotAStorage


class _Storage:
    def __init__(self, storage_type, key, numel):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class _TensorRecord:
    def __init__(self, storage, offset, sizes, strides):
        self.args = (storage, offset, tuple(sizes), tuple(strides), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def zip_torch_save(pkl: bytes, records: dict) -> bytes:
    """torch.save's zip layout around a data.pkl and storage records."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def crafted_torch_save(rng: random.Random) -> bytes:
    """A state dict whose tensors point at storages with random, often impossible, fields."""
    records, state = {}, collections.OrderedDict()
    for i in range(rng.randint(1, 3)):
        type_name = rng.choice(STORAGE_TYPES + ["NotAStorage"])
        numel = rng.choice([rng.randint(0, 16)] * 3 + ODD_INTS)
        key = rng.choice([str(i), "0"])  # "0" again: a storage named twice
        record_bytes = max(0, min(numel, 16)) * ITEM_SIZE.get(type_name, 4)
        record_bytes += rng.choice([0, 0, 0, -1, 1, 4])
        if rng.random() > 0.05:  # sometimes the record is missing
            records[key] = bytes(rng.getrandbits(8) for _ in range(max(0, record_bytes)))
        ndim = rng.randint(0, 3)
        sizes = [rng.choice([rng.randint(0, 4)] * 4 + ODD_INTS) for _ in range(ndim)]
        strides = [rng.choice([rng.randint(0, 4)] * 4 + ODD_INTS) for _ in range(ndim)]
        offset = rng.choice([0, 0, 1] + ODD_INTS)
        storage = _Storage(getattr(torch, type_name), key, numel)
        state[f"t{i}"] = _TensorRecord(storage, offset, sizes, strides)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return zip_torch_save(buf.getvalue(), records)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "insert", "delete", "truncate", "splice_int"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
    elif kind == "insert":
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
    elif kind == "delete":
        at = rng.randrange(len(data))
        del data[at : at + rng.randint(1, 16)]
    elif kind == "truncate":
        del data[rng.randrange(len(data)) :]
    else:  # an 8- or 4-byte little-endian integer overwritten with an extreme value
        width = rng.choice([4, 8])
        at = rng.randrange(max(1, len(data) - width))
        value = rng.choice(ODD_INTS) % (1 << (8 * width))
        data[at : at + width] = value.to_bytes(width, "little")
    return bytes(data)


def mutate_pickle(rng: random.Random, saved: bytes) -> bytes:
    """A real torch.save file with its data.pkl mutated and the zip rebuilt (valid CRCs)."""
    with zipfile.ZipFile(io.BytesIO(saved)) as z:
        names = z.namelist()
        contents = {n: z.read(n) for n in names}
    pkl_name = next(n for n in names if n.endswith("data.pkl"))
    contents[pkl_name] = mutate_bytes(rng, contents[pkl_name])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.writestr(n, contents[n])
    return buf.getvalue()


PLAIN_VALUES = [None, True, False, 0, -1, 7, 2**40, -(2**63), 1.5, float("nan"), "", "text", "é€😀", b"\x00\xff",
                (), []]  # fmt: skip


def random_checkpoint(rng: random.Random, depth: int = 0):
    """A random nest of dicts (string, integer, tuple and None keys), OrderedDicts,
    lists and tuples holding tensors of every storage type and plain values, the
    shapes checkpoints take; tensors sometimes repeated (tied) or views."""
    kind = rng.random()
    if depth > 4 or kind < 0.3:
        if rng.random() < 0.5:
            dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                torch.int32, torch.uint8, torch.bool, torch.complex64])  # fmt: skip
            generator = torch.Generator().manual_seed(rng.getrandbits(31))
            t = torch.randn(rng.randint(0, 3), rng.randint(1, 4), generator=generator).to(dtype)
            return t[:, ::2] if rng.random() < 0.2 else t
        return rng.choice(PLAIN_VALUES)
    n = rng.randint(0, 4)
    items = [random_checkpoint(rng, depth + 1) for _ in range(n)]
    if kind < 0.6:
        # (Keys that render to distinct paths: "1" beside 1 would name one path twice.)
        keys = [rng.choice([f"k{i}", i, -i - 1, (i, "t"), None]) for i in range(n)]
        d = (collections.OrderedDict if rng.random() < 0.3 else dict)(zip(keys, items, strict=True))
        if d and rng.random() < 0.2:
            d["tied"] = next(iter(d.values()))
        return d
    return items if kind < 0.8 else tuple(items)


def random_checkpoint_file(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    torch.save({"root": random_checkpoint(rng)}, buf)
    return buf.getvalue()


def safetensors_bytes(header, data: bytes, length=None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def crafted_safetensors(rng: random.Random) -> bytes:
    header, offset = {}, 0
    for i in range(rng.randint(1, 3)):
        shape = [rng.choice([rng.randint(0, 4)] * 4 + ODD_INTS + [1.5, "2", None]) for _ in range(rng.randint(0, 3))]
        begin = rng.choice([offset] * 4 + ODD_INTS)
        end = rng.choice([begin + rng.randint(0, 16)] * 4 + ODD_INTS)
        header[f"t{i}"] = {"dtype": rng.choice(SAFETENSORS_DTYPES), "shape": shape, "data_offsets": [begin, end]}
        if rng.random() < 0.1:
            del header[f"t{i}"][rng.choice(["dtype", "shape", "data_offsets"])]
        offset = end if isinstance(end, int) else offset
    if rng.random() < 0.1:
        header["__metadata__"] = rng.choice([{"format": "pt"}, {"x": 1}, [], "pt"])
    data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    text = json.dumps(header).encode()
    length = rng.choice([None] * 6 + [0, 1, len(text) - 1, len(text) + 1, len(text) + len(data) + 1] + BIG)
    if rng.random() < 0.05:
        text = b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"  # deep nesting
        length = None
    return safetensors_bytes(text, data, length)


def base_state():
    gen = torch.Generator().manual_seed(0)
    layer = rotary_attention.reference.MultiHeadAttention(8, 2)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return layer.state_dict()


def check_load(path: str, layer, snapshot) -> str:
    """Loads the file both ways; returns "ok" or the first words of the error."""
    outcome = "ok"
    try:
        tensors = rotary_attention.load_file(path)
        assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items())
    except RuntimeError as error:
        outcome = check_message(str(error))
    try:
        layer.load(path)
        snapshot.update({k: v.clone() for k, v in layer.state_dict().items()})
    except RuntimeError as error:
        check_message(str(error))
        for key, value in layer.state_dict().items():
            if not torch.equal(value.view(torch.uint8), snapshot[key].view(torch.uint8)):  # NaN too
                raise AssertionError(f"a failed load changed {key!r}") from None
    return outcome


def check_message(message: str) -> str:
    first = message.splitlines()[0] if message else ""
    if not first.startswith(("load_tensors:", "load_state_dict:")):
        raise AssertionError(f"an error without the loader's prefix: {first!r}")
    if "allocate" in message:
        raise AssertionError(f"the reader tried to allocate more than the file holds: {first!r}")
    words = [w for w in first.split() if "/" not in w and not any(c.isdigit() for c in w)]
    return " ".join(words[:3])


def cap_address_space(extra_bytes: int) -> None:
    """No allocation beyond the file: the process may grow by extra_bytes at most.
    (Not under AddressSanitizer, which reserves terabytes of shadow memory; there
    scripts/sanitize.sh sets max_allocation_size_mb instead.)"""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        return
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + extra_bytes, resource.RLIM_INFINITY))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    state = base_state()
    saved_buf = io.BytesIO()
    torch.save(state, saved_buf)
    saved = saved_buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        safetensors_path = os.path.join(tmp, "base.safetensors")
        rotary_attention.save_file(state, safetensors_path)
        with open(safetensors_path, "rb") as f:
            safetensors_saved = f.read()
    layer = rotary_attention.cpp.MultiHeadAttention(8, 2)
    snapshot = {k: v.clone() for k, v in layer.state_dict().items()}
    cap_address_space(2 << 30)

    makers = [
        ("torch.save bytes", lambda rng: mutate_bytes(rng, saved)),
        ("torch.save pickle", lambda rng: mutate_pickle(rng, saved)),
        ("torch.save crafted", crafted_torch_save),
        ("torch.save nested", lambda rng: mutate_pickle(rng, random_checkpoint_file(rng))),
        ("safetensors bytes", lambda rng: mutate_bytes(rng, safetensors_saved)),
        ("safetensors crafted", crafted_safetensors),
    ]
    outcomes = collections.Counter()
    slowest = (0.0, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.bin")
        for case in range(args.cases):
            name, make = makers[case % len(makers)]
            rng = random.Random(f"{args.seed}-{case}")
            data = make(rng)
            with open(path, "wb") as f:
                f.write(data)
            start = time.perf_counter()
            try:
                outcome = check_load(path, layer, snapshot)
            except AssertionError as failure:
                kept = os.path.abspath(f"fuzz-case-{args.seed}-{case}.bin")
                with open(kept, "wb") as f:
                    f.write(data)
                print(f"FAILED case {case} ({name}), file kept at {kept}: {failure}", flush=True)
                return 1
            elapsed = time.perf_counter() - start
            slowest = max(slowest, (elapsed, case))
            outcomes[(name, outcome)] += 1
    for (name, outcome), count in sorted(outcomes.items()):
        print(f"{count:6d}  {name:20s} {outcome}")
    print(f"{args.cases} cases, all loads returned or raised the loader's error; "
          f"slowest {slowest[0] * 1e3:.1f} ms (case {slowest[1]})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
