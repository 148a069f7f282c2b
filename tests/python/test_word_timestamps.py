"""Word timestamps (`transcribe(word_timestamps=True)`, C++) against openai-whisper's
own `whisper.timing` in the same process: its DTW and median filter on the same
matrices, openai's alignment heads, Whisper tiny.en's words on real speech, a
random fork's words over the original layers, and the subtitle writers' word
options byte for byte against whisper's writers."""

import base64
import contextlib
import gzip
import io
import itertools

import numpy as np
import pytest
import torch
import whisper
import whisper.model
import whisper.timing
import whisper.utils
from test_transcribe import (  # noqa: F401
    assert_same_transcription,
    long_form_fork,
    real_data,
    speech,
    synthesized_signal,
    tiny_en,
)
from test_whisper_fork import MULTILINGUAL, make_fork, original_sdpa

import rotary_attention.cpp
from rotary_attention import _C, reference
from rotary_attention.whisper_inference import whisper_attention_class


@pytest.mark.parametrize("name", sorted(whisper._ALIGNMENT_HEADS))
def test_openai_alignment_heads_are_whisper_s(name):
    """The (layer, head) pairs of whisper's mask, as model.set_alignment_heads decodes it."""
    mask = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool)
    heads = _C._openai_alignment_heads(name)
    n_head = {24: 6, 48: 8, 144: 12, 384: 16, 640: 20, 80: 20}[len(mask)]
    assert heads == [divmod(int(i), n_head) for i in np.flatnonzero(mask)]


def test_a_released_checkpoint_gets_openai_s_heads_and_a_fork_whisper_s_default(tiny_en, tmp_path):  # noqa: F811
    _, model = tiny_en
    assert model.alignment_heads == _C._openai_alignment_heads("tiny.en")
    make_fork(tmp_path / "fork.pt")  # 2 decoder layers of 4 heads
    fork = rotary_attention.cpp.Whisper.load(tmp_path / "fork.pt", tokenizer=MULTILINGUAL)
    assert fork.alignment_heads == [(1, 0), (1, 1), (1, 2), (1, 3)]
    fork.alignment_heads = [(1, 2), (0, 3)]
    assert fork.alignment_heads == [(0, 3), (1, 2)]  # sorted, as whisper's sparse mask lists them
    with pytest.raises(RuntimeError, match="given twice"):
        fork.alignment_heads = [(0, 1), (0, 1)]
    with pytest.raises(RuntimeError, match='no openai model is named "huge"'):
        fork.alignment_heads = "huge"


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (12, 40), (30, 200), (5, 1)])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_dtw_is_whisper_s(shape, ties):
    """The path through the same costs, ties included (small integers tie often:
    whisper's order of preference decides)."""
    g = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    x = torch.randint(0, 3, shape, generator=g).float() if ties else torch.randn(shape, generator=g)
    want = whisper.timing.dtw_cpu(x.double().numpy())
    text, time = _C._dtw(x)
    assert text == want[0].tolist()
    assert time == want[1].tolist()


@pytest.mark.parametrize("frames", [2, 3, 4, 9, 150])
@pytest.mark.parametrize("width", [1, 3, 7])
def test_median_filter_is_whisper_s(frames, width):
    x = torch.randn(4, 6, frames, generator=torch.Generator().manual_seed(frames))
    assert torch.equal(_C._median_filter(x, width), whisper.timing.median_filter(x, width))


def assert_same_words(got, want):
    """Words of each segment: the same text and times (whisper rounds them to
    10 ms); the probabilities to fp32 rounding."""
    assert_same_transcription(got, want)
    n = 0
    for g, w in zip(got["segments"], want["segments"], strict=True):
        assert [x["word"] for x in g["words"]] == [x["word"] for x in w["words"]]
        assert [(x["start"], x["end"]) for x in g["words"]] == [(x["start"], x["end"]) for x in w["words"]]
        for gw, ww in zip(g["words"], w["words"], strict=True):
            assert gw["probability"] == pytest.approx(ww["probability"], abs=1e-4)
        n += len(g["words"])
    return n


@pytest.fixture(scope="module")
def tiny_en_with_openai_heads(tiny_en):  # noqa: F811
    """whisper.load_model(path) uses the default heads; openai's name gives its own."""
    original, model = tiny_en
    original.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    return original, model


def window_crossing(clips):
    """JFK, 3 s of silence, a LibriVox clip, 5 s, another clip that runs over the first
    window's end (26-32 s): the window ends on a timestamp pair, so the next starts at
    the last word's end (23.78 s), where without words it would start at the last
    timestamp."""
    silence = np.zeros(16000 * 3, np.float32), np.zeros(16000 * 5, np.float32)
    return np.concatenate([clips["jfk"], silence[0], clips["librivox-0870"], silence[1], clips["librivox-0920"]])


@pytest.mark.parametrize(
    "recording,options",
    [
        ("jfk", {"hallucination_silence_threshold": 1.0}),
        ("window_crossing", {"append_punctuations": ""}),
    ],
    ids=["jfk-hallucination-threshold", "window-crossing-marks-apart"],
)
def test_tiny_en_words_equal_whisper_s(tiny_en_with_openai_heads, speech, recording, options):  # noqa: F811
    """The same segments, words, and word times as whisper.transcribe(word_timestamps=True);
    the seek moves to the last word's end, as whisper's (the default options: the
    command's test in test_transcribe_command.py)."""
    original, model = tiny_en_with_openai_heads
    audio = window_crossing(speech) if recording == "window_crossing" else speech[recording]
    want = whisper.transcribe(original, audio, fp16=False, word_timestamps=True, **options)
    got = model.transcribe(audio, word_timestamps=True, **options)
    assert assert_same_words(got, want) >= 20
    if recording == "window_crossing":
        seeks = sorted({s["seek"] for s in got["segments"]})
        assert len(seeks) == 2 and 2000 < seeks[1] < 3000  # a window that ended before its end
        assert "." in [w["word"] for s in got["segments"] for w in s["words"]]  # full stops stand alone


MARKS = ['"', "'", "“", "¿", "(", "[", "{", "-", ".", "。", ",", "!", "?", ":", "”", ")", "]", "}"]


@pytest.mark.parametrize("seed", range(6))
def test_merge_punctuations_is_whisper_s(seed):
    """Random runs of words and marks (with and without a space before them)."""
    rng = np.random.default_rng(seed)
    words = []
    for i in range(40):
        kind = rng.integers(3)
        word = f" w{i}" if kind == 0 else (" " if rng.integers(2) else "") + str(rng.choice(MARKS))
        words.append((word, [i]))
    want = [whisper.timing.WordTiming(w, list(t), 0.0, 0.0, 0.0) for w, t in words]
    prepended, appended = "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、"
    whisper.timing.merge_punctuations(want, prepended, appended)
    assert _C._merge_punctuations(words, prepended, appended) == [(w.word, w.tokens) for w in want]


@contextlib.contextmanager
def fork_alignment_without_sdpa():
    """whisper.timing.find_alignment runs the model under disable_sdpa(), which
    turns off SDPA in whisper's own attention class; the original fork's
    attention (in its place) reads a class attribute of its own."""
    plain = whisper.model.disable_sdpa
    whisper.model.disable_sdpa = lambda: original_sdpa(False)
    try:
        yield
    finally:
        whisper.model.disable_sdpa = plain


def test_random_fork_words_equal_whisper_s_over_the_original_layers(tmp_path):
    """The fork's alignment: its attention without SDPA, cross-attention logits of
    the default heads (the last half of the layers). Random weights put many
    near-equal costs in the DTW, so fp32 rounding may move a step: times agree
    to one 20-ms frame, most of them exactly."""
    original, model, options = long_form_fork(tmp_path)
    signal = synthesized_signal(40)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow), original_sdpa(True):
        with fork_alignment_without_sdpa():
            want = whisper.transcribe(original, signal.numpy(), fp16=False, word_timestamps=True, **options)
    got = model.transcribe(signal, word_timestamps=True, **options)
    assert got["text"] == want["text"]
    got_words = [w for s in got["segments"] for w in s["words"]]
    want_words = [w for s in want["segments"] for w in s["words"]]
    assert [w["word"] for w in got_words] == [w["word"] for w in want_words]
    assert len(got_words) >= 10
    times = np.array([(w["start"], w["end"]) for w in got_words])
    want_times = np.array([(w["start"], w["end"]) for w in want_words])
    assert np.abs(times - want_times).max() <= 0.02 + 1e-9
    assert (times == want_times).mean() >= 0.9


def test_find_alignment_on_a_fork_equals_whisper_s(tmp_path):
    """One window's alignment, given the same tokens: the fork's cross-attention
    weights through whisper.timing.find_alignment, and the C++ pass."""
    path = tmp_path / "fork.pt"
    original = make_fork(path, n_audio_ctx=1500, n_text_ctx=64, seed=5)
    model = rotary_attention.cpp.Whisper.load(path, tokenizer=MULTILINGUAL)
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    text_tokens = tokenizer.encode(" And so, my fellow Americans: ask not what your country can do for you.")
    mel = torch.randn(80, 3000, generator=torch.Generator().manual_seed(3))
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow), original_sdpa(False), torch.no_grad():
        features = original.embed_audio(mel.unsqueeze(0))
        with fork_alignment_without_sdpa():
            want = whisper.timing.find_alignment(original, tokenizer, text_tokens, mel, 2200)
    got = model._model.find_alignment(model.tokenizer, "en", text_tokens, features, 2200)
    assert [w["word"] for w in got] == [w.word for w in want]
    assert [w["tokens"] for w in got] == [w.tokens for w in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g["start"] - w.start) <= 0.02 and abs(g["end"] - w.end) <= 0.02
        assert g["probability"] == pytest.approx(w.probability, abs=1e-5)


def test_words_of_unspaced_languages_split_as_whisper_s():
    """Languages written without spaces split where the tokens decode to whole
    characters (multi-byte characters span tokens)."""
    tokenizer = _C._WhisperTokenizer(MULTILINGUAL, 99, 51865)
    for language, text in (
        ("ja", "東京タワーは高いです。"),
        ("zh", "我们今天去公园吧！😀"),
        ("en", " Hello, naïve wörld's 😀!"),
    ):
        theirs = whisper.tokenizer.get_tokenizer(True, num_languages=99, language=language)
        tokens = theirs.encode(text) + [theirs.eot]
        assert tokenizer.split_to_word_tokens(tokens, language) == tuple(
            list(x) for x in theirs.split_to_word_tokens(tokens)
        )


WRITERS = {"vtt": whisper.utils.WriteVTT, "srt": whisper.utils.WriteSRT, "json": whisper.utils.WriteJSON}


def test_writers_with_words_are_whisper_s(tiny_en_with_openai_heads, speech):  # noqa: F811
    """Every combination of the word options (0 reads as none, as whisper's `or`)."""
    _, model = tiny_en_with_openai_heads
    result = model.transcribe(speech["two_windows"], word_timestamps=True)
    for (fmt, writer), highlight, width, count, per_line in itertools.product(
        WRITERS.items(), [False, True], [None, 0, 20, 42], [None, 1, 2], [None, 0, 3]
    ):
        options = dict(
            highlight_words=highlight, max_line_width=width, max_line_count=count, max_words_per_line=per_line
        )
        out = io.StringIO()
        writer(".").write_result(result, out, **options)
        assert _C._format_transcription(result, fmt, options) == out.getvalue().encode(), options
