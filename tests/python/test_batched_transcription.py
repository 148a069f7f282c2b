"""Batched transcription (`transcribe(batch_size=...)`, `transcribe_batched`):
faster-whisper's BatchedInferencePipeline through the C++ decoding loop, against
faster-whisper's own pipeline on the same audio and weights (Whisper tiny.en), and
against itself unbatched and file by file."""

import numpy as np
import pytest
import torch
from test_transcribe import read_wav, real_data, tiny_en  # noqa: F401

from rotary_attention import voice_activity

KEYS = ("start", "end", "text", "tokens")


@pytest.fixture(scope="module")
def long_speech():
    return torch.from_numpy(read_wav(real_data.speech()["long"]))


def test_batched_chunks_are_faster_whisper_s(tiny_en, long_speech):  # noqa: F811
    """faster-whisper's BatchedInferencePipeline (batch 8, its defaults: beam 5, no
    timestamps, the first temperature, no previous text) on the same chunks: the
    speech this library's VAD finds (faster-whisper's batched VAD settings), joined
    and cut where the C++ pipeline cuts its chunks, given to faster-whisper as clips.
    (Its own VAD runs its ONNX export of Silero, whose ranges differ by a window or
    two, and a word may differ then.) The same text, chunk by chunk."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    _, model = tiny_en
    ranges = voice_activity.speech_timestamps(long_speech, max_speech_duration_s=30, min_silence_duration_ms=160)
    joined = torch.cat([long_speech[r["start"] : r["end"]] for r in ranges])
    clips, start, length = [], 0, 0
    for r in ranges:  # chunks of up to 30 s of speech
        if length + r["end"] - r["start"] > 30 * 16000 and length:
            clips.append({"start": start / 16000, "end": (start + length) / 16000})
            start, length = start + length, 0
        length += r["end"] - r["start"]
    clips.append({"start": start / 16000, "end": (start + length) / 16000})
    rival = WhisperModel(str(real_data.DATA / "ct2-tiny.en"), device="cpu", compute_type="float32", cpu_threads=1)
    segments, _ = BatchedInferencePipeline(rival).transcribe(
        joined.numpy(), language="en", batch_size=8, clip_timestamps=clips
    )
    got = model.transcribe(long_speech, batch_size=8, beam_size=5, without_timestamps=True)
    assert [s["text"] for s in got["segments"]] == [s.text for s in segments]
    assert len(got["segments"]) == len(clips) >= 3  # one segment per chunk
    assert got["segments"][-1]["end"] > 120  # in the 123-s recording's times


def test_batching_changes_nothing_but_the_speed(tiny_en, long_speech):  # noqa: F811
    """Two files' chunks in one batch, and each file alone (other batches): the same
    segments, with timestamps, in each audio's own times."""
    _, model = tiny_en
    eight = model.transcribe(long_speech, batch_size=8)
    assert eight["segments"][-1]["end"] > 100  # times in the 123-s recording
    jfk = torch.from_numpy(read_wav(real_data.speech()["jfk"]))
    both = model.transcribe_batched([jfk, long_speech], batch_size=8)
    alone = [model.transcribe(jfk, batch_size=8), eight]
    for got, want in zip(both, alone, strict=True):
        assert got["text"] == want["text"]
        assert [{k: s[k] for k in KEYS} for s in got["segments"]] == [{k: s[k] for k in KEYS} for s in want["segments"]]


def test_batched_words_are_within_their_segments(tiny_en, long_speech):  # noqa: F811
    _, model = tiny_en
    result = model.transcribe(long_speech, batch_size=8, word_timestamps=True)
    words = [w for s in result["segments"] for w in s["words"]]
    assert len(words) >= 100
    starts = np.array([w["start"] for w in words])
    assert (np.diff(starts) >= -0.5).all()  # in order, across chunks mapped back


def test_a_batch_size_of_zero_is_refused(tiny_en):  # noqa: F811
    _, model = tiny_en
    with pytest.raises(RuntimeError, match="batch_size must be at least 1, got 0"):
        model.transcribe(torch.zeros(16000), batch_size=0)
