"""Real checkpoints through the C++ reader: openai-whisper's `{dims, model_state_dict}`
written by Whisper's own classes (fp16), Lightning-shaped files with an optimizer state,
nested lists, tuples and integer keys, and pickles naming globals that
`torch.load(weights_only=True)` refuses. Every accepted file is read as torch.load
(weights_only=True) reads it, its tensors named by dotted paths."""

import argparse
import collections
import dataclasses
import io
import os
import pickle
import random
import re

import numpy as np
import pytest
import torch
import weight_file_fuzzer as fuzzer
import whisper.model
from torch import nn

import rotary_attention
from conftest import causal_mask
from rotary_attention import reference
from rotary_attention.whisper_inference import whisper_attention_class

DIMS = whisper.model.ModelDimensions(
    n_mels=80, n_audio_ctx=12, n_audio_state=32, n_audio_head=4, n_audio_layer=1,
    n_vocab=100, n_text_ctx=8, n_text_state=32, n_text_head=4, n_text_layer=2,
)  # fmt: skip


def flattened(obj, path=""):
    """The tensors of what torch.load returned, by dotted path (written here
    independently of the reader): str and int dict keys, list and tuple indices."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[path] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                out.update(flattened(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out.update(flattened(value, f"{path}.{i}" if path else str(i)))
    return out


def assert_read_like_torch_load(path):
    want = flattened(torch.load(path, weights_only=True))
    got = rotary_attention.load_file(path)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    return got


def whisper_checkpoint(tmp_path):
    """A small random Whisper whose attention is the original's, saved the way
    Whisper's checkpoints are ({"dims", "model_state_dict"}, fp16 tensors)."""
    with whisper_attention_class(reference.MultiHeadAttention):
        model = whisper.model.Whisper(DIMS)
    reference.randomize_weights_(model, 3)
    model.half()
    path = tmp_path / "whisper.pt"
    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path, model


@pytest.mark.parametrize("layer", ["decoder.blocks.1.attn", "decoder.blocks.0.cross_attn", "encoder.blocks.0.attn"])
def test_one_layer_out_of_an_openai_whisper_checkpoint(tmp_path, layer):
    path, model = whisper_checkpoint(tmp_path)
    original = model.get_submodule(layer).float()  # the fp16 weights, in an fp32 module
    prefix = "model_state_dict." + layer
    cpp_layer = rotary_attention.cpp.MultiHeadAttention(32, 4)
    cpp_layer.load(str(path), prefix=prefix)  # 16-bit file into an fp32 module: converted
    module = rotary_attention.MultiHeadAttention(32, 4)
    module.load_state_dict(rotary_attention.load_file(path, prefix + "."))
    x = torch.randn(2, 5, 32)
    want = original(x, mask=causal_mask(8))[0]
    for port in (cpp_layer, module):
        assert all(t.dtype == torch.float32 for t in port.state_dict().values())
        torch.testing.assert_close(port(x, mask=causal_mask(8))[0], want, rtol=0, atol=0)
    got = assert_read_like_torch_load(path)
    assert "model_state_dict.decoder.token_embedding.weight" in got and not any(k.startswith("dims") for k in got)


def lightning_checkpoint(tmp_path):
    """What Lightning's `trainer.save_checkpoint` writes, with the model under `model.`."""

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = reference.MultiHeadAttention(32, 4)
            self.head = nn.Linear(32, 3)

    holder = nn.Module()
    holder.model = Module()
    reference.randomize_weights_(holder, 4)
    optimizer = torch.optim.AdamW(holder.parameters(), lr=1e-3, betas=(0.9, 0.98))
    holder.model.head(holder.model.attn(torch.randn(2, 3, 32))[0]).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": holder.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25),
                                                                 "dirpath": "/ckpt", "best_k_models": {}}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "betas": (0.9, 0.98), "name": "run-7", "scheduler": None,
                             "flags": [True, False], "blob": b"\x00\x01", "big": 2**40, "neg": -3},
    }  # fmt: skip
    path = tmp_path / "epoch=3-step=1200.ckpt"
    torch.save(checkpoint, path)
    return path, holder, optimizer


def test_one_layer_and_an_optimizer_state_out_of_a_lightning_checkpoint(tmp_path):
    path, holder, optimizer = lightning_checkpoint(tmp_path)
    layer = rotary_attention.cpp.MultiHeadAttention(32, 4)
    layer.load(str(path), prefix="state_dict.model.attn")
    want = holder.model.attn.state_dict()
    assert sorted(layer.state_dict()) == sorted(want)
    for key, value in want.items():
        assert torch.equal(layer.state_dict()[key], value), key
    # (Parameter 0, the temperature, gets no gradient on the SDPA path: no state.)
    adam = rotary_attention.load_file(path, "optimizer_states.0.state.1")  # an int-keyed dict
    state = optimizer.state_dict()["state"][1]
    assert sorted(adam) == sorted(state)
    for key, value in state.items():
        assert torch.equal(adam[key], value), key
    got = assert_read_like_torch_load(path)
    assert "callbacks.ModelCheckpoint{'monitor': 'val_loss'}.best_model_score" in got
    assert not any(k.startswith(("epoch", "hyper_parameters", "global_step")) for k in got)  # plain values


def test_nested_lists_tuples_integer_keys_and_plain_values(tmp_path):
    t = torch.arange(6.0).view(2, 3)
    deep = t[0]
    for _ in range(300):
        deep = [deep]
    obj = {
        "list": [t, (t.double(), None, "text", 1.5), [], {"inner": collections.OrderedDict(a=t.half())}],
        7: {0: t.int(), -2: t.bool(), "x": b"bytes"},
        (1, 2): t,  # a tuple key: no dotted path, as torch.load's dict has no string for it
        "tied": t,  # the same tensor under two names
        "deep": deep,
        "empty": {},
        "flags": (True, False, None),
    }
    path = tmp_path / "nested.pt"
    torch.save(obj, path)
    got = assert_read_like_torch_load(path)
    assert "list.1.0" in got and "7.-2" in got and "list.3.inner.a" in got and "deep" + ".0" * 300 in got
    under = rotary_attention.load_file(path, "7")  # "x" holds bytes: no tensor
    assert sorted(under) == ["-2", "0"] and torch.equal(under["0"], t.int())


def test_a_prefix_ends_at_a_dot_boundary(tmp_path):
    layers = {i: reference.randomize_weights_(reference.MultiHeadAttention(32, 4), i) for i in (1, 10)}
    state = {f"blocks.{i}.{k}": v for i, layer in layers.items() for k, v in layer.state_dict().items()}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    for prefix in ("blocks.1", "blocks.1."):
        layer = rotary_attention.cpp.MultiHeadAttention(32, 4)
        layer.load(str(path), prefix=prefix)  # strict: nothing of blocks.10 may come along
        for key, value in layers[1].state_dict().items():
            assert torch.equal(layer.state_dict()[key], value), key
        assert sorted(rotary_attention.load_file(path, prefix)) == sorted(layers[1].state_dict())


def test_a_prefix_with_nothing_under_it_lists_the_top_level_keys_and_the_nearest_prefixes(tmp_path):
    path, _ = whisper_checkpoint(tmp_path)
    layer = rotary_attention.cpp.MultiHeadAttention(32, 4)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError) as error:
        layer.load(str(path), prefix="decoder.blocks.1.attn")  # without "model_state_dict."
    message = str(error.value)
    assert 'top-level keys: ["dims", "model_state_dict"]' in message
    assert 'nearest prefixes that hold tensors: ["model_state_dict.decoder.blocks.1.attn."' in message
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


class Runs:
    """Pickles as a call of `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def zipped(obj, protocol=2):
    return fuzzer.zip_torch_save(pickle.dumps(obj, protocol=protocol), {})


# By the names the pickles hold (protocol 2 writes builtins as __builtin__).
REFUSED = {
    "posix.system": lambda marker: zipped({"w": Runs(os.system, f"touch {marker}")}),
    "__builtin__.eval": lambda marker: zipped({"w": Runs(eval, f"open({str(marker)!r}, 'w')")}),
    "argparse.Namespace": lambda marker: zipped({"hparams": argparse.Namespace(lr=0.1)}),
    "multiarray._reconstruct": lambda marker: zipped({"array": np.arange(3)}),
    "torch.nn.modules.linear.Linear": lambda marker: torch_saved(nn.Linear(2, 2)),
    "collections.Counter": lambda marker: zipped({"c": collections.Counter("ab")}, protocol=4),
}


def torch_saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name", list(REFUSED))
def test_globals_weights_only_refuses_are_refused_by_name_and_never_run(tmp_path, name):
    marker = tmp_path / "ran"
    path = tmp_path / "w.pt"
    path.write_bytes(REFUSED[name](marker))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the anchor refuses it too
    layer = rotary_attention.cpp.MultiHeadAttention(8, 2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    for load in (lambda: rotary_attention.load_file(path), lambda: layer.load(str(path))):
        with pytest.raises(RuntimeError, match=f"names the global [a-z_.]*{re.escape(name)}, which is not allowed"):
            load()
    assert not marker.exists()
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("seed", range(60))
def test_random_nested_checkpoints_are_read_as_torch_load_reads_them(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(fuzzer.random_checkpoint_file(random.Random(seed)))
    assert_read_like_torch_load(path)


def test_tensors_outside_the_prefix_are_not_built(tmp_path):
    """b.w claims 5 elements of a 4-element storage: building it fails, so a
    load under the prefix "a" succeeds only because b.w is never built."""
    state = collections.OrderedDict()
    state["a"] = {"w": fuzzer._TensorRecord(fuzzer._Storage(torch.FloatStorage, "0", 4), 0, (4,), (1,))}
    state["b"] = {"w": fuzzer._TensorRecord(fuzzer._Storage(torch.FloatStorage, "1", 4), 0, (5,), (1,))}
    buffer = io.BytesIO()
    fuzzer._Pickler(buffer, protocol=2).dump(state)
    path = tmp_path / "w.pt"
    path.write_bytes(fuzzer.zip_torch_save(buffer.getvalue(), {"0": bytes(16), "1": bytes(16)}))
    assert torch.equal(rotary_attention.load_file(path, "a")["w"], torch.zeros(4))
    with pytest.raises(RuntimeError, match="load_tensors: .* is malformed"):
        rotary_attention.load_file(path)
