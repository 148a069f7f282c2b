"""The weight-file readers against mutated and crafted files (weight_file_fuzzer.py, run in
a subprocess so that a crash or a hang fails here with the case that caused it), and the
worst cases the fuzzer reaches only by chance, written out."""

import collections
import io
import os
import re
import subprocess
import sys

import pytest
import torch
import weight_file_fuzzer as fuzzer

import rotary_attention

HERE = os.path.dirname(os.path.abspath(__file__))


def test_thousands_of_mutated_weight_files_give_clear_errors_and_leave_the_module_unchanged(tmp_path):
    # 5000 cases take about 5 s here; `python weight_file_fuzzer.py --cases N` runs longer.
    run = subprocess.run(
        [sys.executable, os.path.join(HERE, "weight_file_fuzzer.py"), "--cases", "5000"],
        capture_output=True, text=True, timeout=110, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "5000 cases, all loads returned or raised the loader's error" in run.stdout
    # Every kind of mutation ran, and each produced both refusals and successful loads
    # (harmless mutations of tensor data load), so the cases are neither all broken nor all benign.
    for kind in ("torch.save bytes", "torch.save pickle", "torch.save crafted", "torch.save nested",
                 "safetensors bytes", "safetensors crafted"):  # fmt: skip
        lines = [line for line in run.stdout.splitlines() if kind in line]
        assert any("load_tensors:" in line for line in lines), kind
    assert any(" ok" in line for line in run.stdout.splitlines() if "torch.save bytes" in line)


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def pickled_state(storage_type, numel, record_bytes, sizes=(2,), strides=(1,), offset=0):
    state = collections.OrderedDict()
    state["w"] = fuzzer._TensorRecord(fuzzer._Storage(storage_type, "0", numel), offset, sizes, strides)
    buf = io.BytesIO()
    fuzzer._Pickler(buf, protocol=2).dump(state)
    return fuzzer.zip_torch_save(buf.getvalue(), {"0": bytes(record_bytes)})


def test_crafted_files_the_reader_accepts_are_read_like_torch_load(tmp_path):
    path = write(tmp_path / "ok.pt", pickled_state(torch.FloatStorage, 4, 16, sizes=(2,), strides=(2,), offset=1))
    assert torch.equal(rotary_attention.load_file(path)["w"], torch.load(path, weights_only=True)["w"])


@pytest.mark.parametrize(
    ("numel", "record_bytes", "message"),
    [
        (2**40, 16, "which do not hold 1099511627776 elements"),  # 4 TiB claimed, never allocated
        (2**61, 16, "which do not hold"),  # numel * 8 overflows 64 bits
        (-1, 16, "which do not hold -1 elements"),
        (4, 12, "12 bytes, which do not hold 4 elements"),
    ],
)
def test_a_storage_size_the_record_does_not_hold_is_refused_before_allocating(tmp_path, numel, record_bytes, message):
    path = write(tmp_path / "w.pt", pickled_state(torch.FloatStorage, numel, record_bytes))
    with pytest.raises(RuntimeError, match=message):
        rotary_attention.load_file(path)


def test_sizes_strides_and_offsets_outside_the_storage_are_refused(tmp_path):
    for sizes, strides, offset in [((5,), (1,), 0), ((2,), (1,), 3), ((2,), (-1,), 1), ((-2,), (1,), 0),
                                   ((2, 2), (2**62, 1), 0)]:  # fmt: skip
        path = write(tmp_path / "w.pt", pickled_state(torch.FloatStorage, 4, 16, sizes, strides, offset))
        with pytest.raises(RuntimeError, match="load_tensors: .*"):
            rotary_attention.load_file(path)


def test_a_pickle_nested_a_million_deep_or_holding_itself_is_handled(tmp_path):
    # EMPTY_LIST a million times, then APPEND each into the one below: a chain a million
    # deep, which recursive destruction would overflow the stack on; then a list that
    # holds itself (through the memo), which reference counting alone would leak.
    deep = b"\x80\x02" + b"]" * 1_000_000 + b"a" * 999_999 + b"."
    cycle = b"\x80\x02]q\x00h\x00a."
    for name, pkl, message in (("deep", deep, "nests containers deeper than 10000 levels"),
                               ("cycle", cycle, "holds a container inside itself")):  # fmt: skip
        path = write(tmp_path / f"{name}.pt", fuzzer.zip_torch_save(pkl, {}))
        with pytest.raises(RuntimeError, match=message):
            rotary_attention.load_file(path)


def test_a_zip_directory_claiming_more_than_the_file_is_refused_before_allocating(tmp_path):
    original = pickled_state(torch.FloatStorage, 4, 16)
    claimed = (2**32 - 2).to_bytes(4, "little")  # 4 GiB - 2 (4 GiB - 1 would mean "see zip64")
    only_central, everywhere = bytearray(original), bytearray(original)
    central = original.rfind(b"PK\x01\x02", 0, original.rfind(b"archive/data.pkl"))
    local = original.find(b"PK\x03\x04")  # data.pkl is the first record
    only_central[central + 24 : central + 28] = claimed  # uncompressed size
    for header, size_at in ((central, 20), (local, 18)):  # compressed and uncompressed sizes
        everywhere[header + size_at : header + size_at + 8] = claimed + claimed
    for data in (only_central, everywhere):
        path = write(tmp_path / "w.pt", bytes(data))
        with pytest.raises(RuntimeError, match="load_tensors: .*") as error:
            rotary_attention.load_file(path)
        assert "allocate" not in str(error.value)


def test_invalid_safetensors_headers_are_refused(tmp_path):
    def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
        return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}

    cases = {  # the file, and what the error must say
        "length beyond the file": (fuzzer.safetensors_bytes({}, b"", length=2**40), "claims 1099511627776 bytes"),
        "nested deeply": (fuzzer.safetensors_bytes(b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}", b""), "too deeply"),
        "negative size": (fuzzer.safetensors_bytes({"a": entry(shape=[-1])}, bytes(4)), "not a non-negative integer"),
        "offsets past the data": (fuzzer.safetensors_bytes({"a": entry(shape=[2], offsets=[0, 8])}, bytes(4)),
                                  "lie outside the file's 4 data bytes"),
        "shape against bytes": (fuzzer.safetensors_bytes({"a": entry(shape=[2**40])}, bytes(4)), "does not fill"),
        "overlap": (fuzzer.safetensors_bytes({"a": entry(), "b": entry()}, bytes(4)), "must not overlap"),
        "gap": (fuzzer.safetensors_bytes({"a": entry(offsets=[4, 8])}, bytes(8)), "must not overlap or leave gaps"),
        "unused bytes": (fuzzer.safetensors_bytes({"a": entry()}, bytes(8)), "4 data bytes that no tensor uses"),
        "unknown dtype": (fuzzer.safetensors_bytes({"a": entry(dtype="F7")}, bytes(4)), 'unknown safetensors dtype'),
        "not JSON": (fuzzer.safetensors_bytes(b"{not json}", b""), "not a JSON object"),
        "metadata not text": (fuzzer.safetensors_bytes({"__metadata__": {"a": 1}}, b""), "is not a string"),
    }  # fmt: skip
    layer = rotary_attention.cpp.MultiHeadAttention(8, 2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    for data, message in cases.values():
        path = write(tmp_path / "w.safetensors", data)
        with pytest.raises(RuntimeError, match="load_tensors: .*" + re.escape(message)):
            rotary_attention.load_file(path)
        with pytest.raises(RuntimeError, match="load_tensors: .*" + re.escape(message)):
            layer.load(path)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key
