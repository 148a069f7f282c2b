"""Every row of the "Refused inputs" table (docs/refused-inputs.md), run: each public entry
point given the bad input the row names must raise the error the row quotes (and the table
must list exactly these rows, so that the two cannot drift apart)."""

import json
import os
import re

import pytest
import torch
import weight_file_fuzzer as fuzzer

import rotary_attention
import rotary_attention.voice_activity
import rotary_attention.whisper_model
from rotary_attention import cpp

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "refused-inputs.md")


def x4(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def freq(n):
    return rotary_attention.RotaryEmbedding(2 * n).inv_freq


def write_bytes(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def storage_size_mismatch(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(4)}, path)
    data = bytearray(path.read_bytes())
    # The storage record data/0 holds 16 bytes; the pickle says 4 elements (K\x04 after 'cpu').
    at = data.find(b"cpu")
    data[data.find(b"K\x04", at) + 1] = 5
    path.write_bytes(bytes(data))
    return path


def small_model():
    """A tiny fork in Python: openai-whisper's model with the library's layers (random weights)."""
    import whisper.model

    from rotary_attention.whisper_inference import whisper_attention_class

    dims = whisper.model.ModelDimensions(
        n_mels=80, n_audio_ctx=20, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=8, n_text_state=16, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    with whisper_attention_class(rotary_attention.MultiHeadAttention):
        return whisper.model.Whisper(dims)


def small_fork(p, **change):
    """A tiny openai-whisper checkpoint of the fork (random weights), its dims changed."""
    import dataclasses

    model = small_model()
    dims = model.dims
    checkpoint = {"dims": {**dataclasses.asdict(dims), **change}, "model_state_dict": model.state_dict()}
    torch.save(checkpoint, p / "fork.pt")
    return p / "fork.pt"


def hooked_fork():
    """A small fork in Python, a forward hook on its first decoder block's MLP."""
    model = small_model()
    model.decoder.blocks[0].mlp.register_forward_hook(lambda *args: None)
    return model


def CppDecoder(model):  # noqa: N802 (the class, imported when the row runs: whisper is needed)
    from rotary_attention.whisper_inference import CppDecoder as cpp_decoder

    return cpp_decoder(model)


def vocabulary(name):
    import whisper

    return os.path.join(os.path.dirname(whisper.__file__), "assets", f"{name}.tiktoken")


def truncated_fork(p):
    data = small_fork(p).read_bytes()
    (p / "cut.pt").write_bytes(data[: len(data) // 2])
    return p / "cut.pt"


def scripted_identity(p):
    torch.jit.script(torch.nn.Identity()).save(str(p / "identity.jit"))
    return p / "identity.jit"


def without_alignment_heads(model):
    model.alignment_heads = []
    return model


def wav_of(p, frames):
    import wave

    with wave.open(str(p / "a.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(b"\0\0" * frames)
    return p / "a.wav"


# (entry point, refused input, error excerpt as in the table, call raising it, exception type)
ROWS = [
    ("rotary", "x not of rank 4", "expected x of shape (B, T, H, D)",
     lambda p: rotary_attention.rotary(torch.randn(2, 8), freq(4)), RuntimeError),
    ("rotary", "x of an integer dtype", "x must be float32, float64, float16 or bfloat16",
     lambda p: rotary_attention.rotary(torch.ones(1, 2, 1, 8, dtype=torch.long), freq(4)), RuntimeError),
    ("rotary", "inv_freq not 1-D", "inv_freq must be a 1-D floating tensor",
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(4)[None]), RuntimeError),
    ("rotary", "inv_freq of the wrong length", "inv_freq must have rotary_dim / 2",
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(3)), RuntimeError),
    ("rotary", "negative rotary_dim", "rotary_dim must be -1 (all of D) or a positive even number",
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(4), rotary_dim=-2), RuntimeError),
    ("rotary", "odd rotary_dim, or one above D", "the rotated size must be even and at most D",
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(4), rotary_dim=3), RuntimeError),
    ("rotary", "unknown layout", 'layout must be "interleaved_to_half"',
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(4), layout="rope"), RuntimeError),
    ("rotary", "floating positions", "positions must be int64 or int32",
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(4), torch.zeros(2)), RuntimeError),
    ("rotary", "positions of the wrong shape", "positions must have shape (T,) or (B, T)",
     lambda p: rotary_attention.rotary(x4(1, 2, 1, 8), freq(4), torch.arange(3)), RuntimeError),
    ("rotary_", "x with overlapping memory (an expanded view)", "x has overlapping memory",
     lambda p: rotary_attention.rotary_(x4(1, 1, 1, 8).expand(2, 1, 1, 8), freq(4)), RuntimeError),
    ("multi_head_attention", "cached_key without cached_value", "pass both cached_key and cached_value",
     lambda p: attention_with_cache(torch.randn(1, 2, 16), None), RuntimeError),
    ("MultiHeadAttention(n_state, n_head)", "n_state not divisible by n_head", "must be divisible by n_head",
     lambda p: rotary_attention.MultiHeadAttention(30, 4), ValueError),
    ("cpp.MultiHeadAttention(n_state, n_head)", "n_state not divisible by n_head", "must be divisible by n_head",
     lambda p: cpp.MultiHeadAttention(30, 4), RuntimeError),
    ("RotaryEmbedding(dim)", "odd dim", "dim (the head dim) must be positive and even",
     lambda p: rotary_attention.RotaryEmbedding(7), ValueError),
    ("RotationLayer forward", "x whose last dimension is not embed_dim", "expected x with last dimension",
     lambda p: cpp.RotationLayer(8)(torch.randn(2, 6)), RuntimeError),
    ("MultiHeadAttention forward", "x whose last dimension is not n_state", "MultiHeadAttention: expected",
     lambda p: rotary_attention.MultiHeadAttention(16, 2)(torch.randn(1, 3, 8)), RuntimeError),
    ("MultiHeadAttention forward", "a mask that is not 2-D", "mask must be a 2-D additive mask of at least (T, T)",
     lambda p: rotary_attention.MultiHeadAttention(16, 2)(torch.randn(1, 3, 16), mask=torch.zeros(3, 3, 1)),
     RuntimeError),
    ("MultiHeadAttention forward", "a mask smaller than (T, T) on the explicit path", "adds mask[:T, :T]",
     lambda p: rotary_attention.MultiHeadAttention(16, 2, sdpa=False)(torch.randn(1, 3, 16), mask=torch.zeros(2, 2)),
     RuntimeError),
    ("MultiHeadAttention forward", "xa with another batch size, not 1", "xa must have x's batch size 2 or 1",
     lambda p: rotary_attention.MultiHeadAttention(16, 2)(torch.randn(2, 3, 16), xa=torch.randn(3, 4, 16)),
     RuntimeError),
    ("MultiHeadAttention forward", "a kv_cache neither a KVCache nor a dict",
     "kv_cache must be a rotary_attention.KVCache or a dict",
     lambda p: rotary_attention.MultiHeadAttention(16, 2)(torch.randn(1, 3, 16), kv_cache=[]), TypeError),
    ("MultiHeadAttention forward", "a KVCache with a hooked rotation_layer",
     "a KVCache needs the library's own RotaryEmbedding",
     lambda p: hooked_rotation(rotary_attention.MultiHeadAttention(16, 2))(torch.randn(1, 3, 16),
                                                                              kv_cache=rotary_attention.KVCache()),
     ValueError),
    ("KVCache.reorder", "an index past the cached batch", "indices must be in [0, 1)",
     lambda p: filled_cache(rotary_attention.KVCache()).reorder([0, 1]), IndexError),
    ("cpp.KVCache.reorder", "indices that are not int64", "indices must be a 1-D int64 tensor",
     lambda p: filled_cache(cpp.KVCache()).reorder(torch.tensor([0.0])), RuntimeError),
    ("KVCache.crop", "a length past a row's cached steps",
     "lengths must give each of the 1 rows a value in [0, its cached steps]",
     lambda p: filled_cache(rotary_attention.KVCache()).crop([2]), ValueError),
    ("decode_attention", "lengths that are not (B,) integers", "lengths must be an int64 or int32 tensor of shape (B,)",
     lambda p: rotary_attention.decode_attention(x4(2, 1, 16), x4(2, 4, 16), x4(2, 4, 16), torch.tensor([1.0, 2.0]), 2),
     RuntimeError),
    ("decode_attention", "a length past the capacity", "lengths must lie in [0, capacity=4]",
     lambda p: rotary_attention.decode_attention(x4(1, 1, 16), x4(1, 4, 16), x4(1, 4, 16), torch.tensor([5]), 2),
     RuntimeError),
    ("decode_attention", "a cache of another dtype", "key_cache must have q's dtype and device",
     lambda p: rotary_attention.decode_attention(
         x4(1, 1, 16), x4(1, 4, 16, dtype=torch.float64), x4(1, 4, 16), torch.tensor([1]), 2),
     RuntimeError),
    ("decode_attention", "inputs that require grad", "decode_attention is for inference and has no backward",
     lambda p: rotary_attention.decode_attention(
         x4(1, 1, 16).requires_grad_(), x4(1, 4, 16), x4(1, 4, 16), torch.tensor([1]), 2), RuntimeError),
    ("attention_core", "rotate=False with a cache", "rotate=False (q and k rotated by the caller) takes no cache",
     lambda p: torch.ops.rotary_attention.attention_core(
         *[torch.randn(1, 2, 16)] * 3, False, None, freq(4), torch.eye(8), torch.ones(1), 2, True, 0.0, False,
         torch.randn(1, 2, 16), torch.randn(1, 2, 16)), RuntimeError),
    ("load_file / load", "a path that does not exist", "cannot open",
     lambda p: rotary_attention.load_file(p / "missing.pt"), RuntimeError),
    ("load_file / load", "a pickle naming a global weights_only refuses",
     "names the global posix.system, which is not allowed",
     lambda p: rotary_attention.load_file(write_bytes(p, "w.pt", fuzzer.zip_torch_save(
         b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.", {}))), RuntimeError),
    ("load_file / load", "a file in neither format", "neither a torch.save zip file nor a safetensors file",
     lambda p: rotary_attention.load_file(write_bytes(p, "w.bin", b"not weights at all")), RuntimeError),
    ("load_file / load", "a storage size its record does not hold", "which do not hold",
     lambda p: rotary_attention.load_file(storage_size_mismatch(p)), RuntimeError),
    ("load_file / load", "a safetensors header longer than the file", "claims",
     lambda p: rotary_attention.load_file(write_bytes(p, "w.safetensors", (2**40).to_bytes(8, "little") + b"{}")),
     RuntimeError),
    ("load_file / load", "safetensors offsets outside the data", "lie outside the file's",
     lambda p: rotary_attention.load_file(write_bytes(
         p, "w.safetensors", safetensors_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 4))),
     RuntimeError),
    ("cpp.MultiHeadAttention.load", "weights of a layer of another size", "size mismatch",
     lambda p: load_other_size(p), RuntimeError),
    ("cpp.MultiHeadAttention.load", "a prefix no key starts with", "no entry",
     lambda p: load_with_prefix(p, "decoder.blocks.9."), RuntimeError),
    ("save_file", "a value that is not a tensor", "is not a tensor",
     lambda p: rotary_attention.save_file({"a": 1.0}, p / "w.pt"), TypeError),
    ("save_file", "a dtype safetensors cannot hold", "safetensors cannot hold",
     lambda p: rotary_attention.save_file({"a": torch.zeros(2, dtype=torch.complex128)}, p / "w.safetensors"),
     RuntimeError),
    ("save_file", "an unknown format", "format must be",
     lambda p: rotary_attention.save_file({"a": torch.zeros(2)}, p / "w.pt", format="npz"), RuntimeError),
    ("cpp.Whisper.load", "a checkpoint that does not exist", "cannot open",
     lambda p: cpp.Whisper.load(p / "none.pt", tokenizer=vocabulary("multilingual")), RuntimeError),
    ("cpp.Whisper.load", "a truncated checkpoint", "load_tensors",
     lambda p: cpp.Whisper.load(truncated_fork(p), tokenizer=vocabulary("multilingual")), RuntimeError),
    ("cpp.Whisper.load", "dims that disagree with the tensors", "does not fit its dims",
     lambda p: cpp.Whisper.load(small_fork(p, n_text_layer=2), tokenizer=vocabulary("multilingual")), RuntimeError),
    ("cpp.Whisper.load", "a checkpoint without dims", "is not an openai-whisper checkpoint",
     lambda p: cpp.Whisper.load(small_fork(p, n_mels="80"), tokenizer=vocabulary("multilingual")), RuntimeError),
    ("cpp.Whisper.load", "a vocabulary that does not fit the checkpoint", "does not fit the model",
     lambda p: cpp.Whisper.load(small_fork(p), tokenizer=vocabulary("gpt2")), RuntimeError),
    ("cpp.Whisper.load", "a compute_type other than float32 and int8", 'expected "float32" or "int8", got "int4"',
     lambda p: cpp.Whisper.load(small_fork(p), vocabulary("multilingual"), compute_type="int4"), RuntimeError),
    ("whisper_inference.CppDecoder", "a decoder with a hook", "would not compute this model's decoder",
     lambda p: CppDecoder(hooked_fork()), ValueError),
    ("cpp.Whisper.decode", "best_of at temperature 0", "best_of with greedy sampling (T=0) is not compatible",
     lambda p: cpp.Whisper.load(small_fork(p), vocabulary("multilingual")).decode(torch.randn(20, 16), best_of=2),
     RuntimeError),
    ("cpp.Whisper.decode", "a negative temperature", "temperature must be >= 0",
     lambda p: cpp.Whisper.load(small_fork(p), vocabulary("multilingual")).decode(torch.randn(20, 16),
                                                                                  temperature=-1.0),
     RuntimeError),
    ("cpp.Whisper.transcribe", "word_timestamps with no alignment heads", "needs the model's alignment heads",
     lambda p: without_alignment_heads(cpp.Whisper.load(small_fork(p), vocabulary("multilingual"))).transcribe(
         torch.zeros(16000), word_timestamps=True),
     RuntimeError),
    ("cpp.Whisper.alignment_heads", "a head outside the decoder", "is outside the decoder's",
     lambda p: setattr(cpp.Whisper.load(small_fork(p), vocabulary("multilingual")), "alignment_heads", [(9, 0)]),
     RuntimeError),
    ("cpp.Whisper.alignment_heads", "an openai model name that does not fit", "openai's tiny.en has",
     lambda p: setattr(cpp.Whisper.load(small_fork(p), vocabulary("multilingual")), "alignment_heads", "tiny.en"),
     RuntimeError),
    ("cpp.Whisper.transcribe", "a batch size of 0", "batch_size must be at least 1, got 0",
     lambda p: cpp.Whisper.load(small_fork(p), vocabulary("multilingual")).transcribe(torch.zeros(16000),
                                                                                      batch_size=0),
     RuntimeError),
    ("voice_activity.load_silero_vad", "a TorchScript model that is not Silero VAD", "not Silero VAD's",
     lambda p: rotary_attention.voice_activity.load_silero_vad(scripted_identity(p)), RuntimeError),
    ("voice_activity.load_silero_vad", "a file that is not a TorchScript model", "is not a TorchScript model",
     lambda p: (p / "vad.jit").write_text("text") and rotary_attention.voice_activity.load_silero_vad(p / "vad.jit"),
     RuntimeError),
    ("voice_activity.speech_timestamps", "a threshold outside (0, 1)", "threshold must be in (0, 1)",
     lambda p: rotary_attention.voice_activity.speech_timestamps(torch.zeros(16000), threshold=1.5), RuntimeError),
    ("whisper_model.load_audio", "a file that is not audio", "as audio",
     lambda p: (p / "a.wav").write_text("text") and rotary_attention.whisper_model.load_audio(p / "a.wav"),
     RuntimeError),
    ("whisper_model.load_audio", "an empty audio file", "holds no audio",
     lambda p: rotary_attention.whisper_model.load_audio(wav_of(p, 0)), RuntimeError),
]  # fmt: skip


def attention_with_cache(cached_key, cached_value):
    layer = rotary_attention.MultiHeadAttention(16, 2)
    return layer._attention(torch.randn(1, 1, 16), None, None, cached_key, cached_value, 0)


def safetensors_file(header, data_bytes):

    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + bytes(data_bytes)


def load_other_size(p):
    path = p / "small.pt"
    torch.save(rotary_attention.MultiHeadAttention(16, 2).state_dict(), path)
    cpp.MultiHeadAttention(32, 4).load(path)


def load_with_prefix(p, prefix):
    path = p / "model.pt"
    state = {f"decoder.blocks.0.{k}": v for k, v in rotary_attention.MultiHeadAttention(16, 2).state_dict().items()}
    torch.save(state, path)
    cpp.MultiHeadAttention(16, 2).load(path, prefix=prefix)


def hooked_rotation(layer):
    layer.rotation_layer.register_forward_hook(lambda module, args, out: out)
    return layer


def filled_cache(cache):
    """A cache holding one step of a batch of 1."""
    faces = rotary_attention.cpp if isinstance(cache, cpp.KVCache) else rotary_attention
    with torch.no_grad():
        faces.MultiHeadAttention(16, 2)(torch.randn(1, 1, 16), kv_cache=cache)
    return cache


def readme_error(error, kind):
    """The table's cell: the excerpt, with the exception type when it is not RuntimeError."""
    return error if kind is RuntimeError else f"{kind.__name__}: {error}"


@pytest.mark.parametrize(("entry", "bad_input", "error", "call", "kind"), ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_refused_input_gives_the_documented_error(tmp_path, entry, bad_input, error, call, kind):
    with pytest.raises(kind, match=re.escape(error)):
        call(tmp_path)


def test_the_documented_table_lists_exactly_these_rows():
    with open(TABLE) as f:
        section = f.read()
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and not set(cells[0]) <= {"-", " "} and cells[0] != "Entry point":
            rows.append(tuple(c.strip("`").replace("\\|", "|") for c in cells))
    assert rows == [(entry, bad_input, readme_error(error, kind)) for entry, bad_input, error, _, kind in ROWS]
    assert len(rows) >= 20
