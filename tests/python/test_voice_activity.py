"""Silero VAD in C++ (`silero_vad.jit` loaded with torch::jit::load) against the
silero-vad package's own `get_speech_timestamps` in the same process, and
`transcribe(vad_filter=True)` against faster-whisper's: its time map
(`restore_speech_timestamps`) over the same segments, and its transcript of the
same audio with Whisper tiny.en (its CTranslate2 conversion)."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from test_transcribe import read_wav, real_data, tiny_en  # noqa: F401

from rotary_attention import _C, voice_activity


@pytest.fixture(scope="module")
def silero():
    """The silero-vad package and its TorchScript model (importing it sets torch's
    threads to 1: set back for the other tests of this worker)."""
    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad, silero_vad.load_silero_vad()


@pytest.fixture(scope="module")
def recordings():
    """JFK and LibriVox speech with silences around them (3.5 s between: both
    faster-whisper's VAD and this one cut there), 10 s of silence, and noise."""
    speech = real_data.speech()
    jfk, libri = read_wav(speech["jfk"]), read_wav(speech["librivox-0870"])
    silence = np.zeros(16000 * 4, np.float32)
    noise = np.random.default_rng(0).normal(0, 0.02, 16000 * 6).astype(np.float32)
    return {
        "speech": torch.from_numpy(np.concatenate([silence, jfk, silence[:56000], libri, silence[:7777]])),
        "silence": torch.zeros(16000 * 10),
        "noise": torch.from_numpy(noise),
    }


@pytest.fixture(scope="module")
def probabilities(silero, recordings):
    """Each recording's window probabilities: the package's, as its
    get_speech_timestamps computes them (512-sample windows, the last padded; on
    one thread, as the package sets torch), and this library's."""
    _, model = silero
    ours = voice_activity.load_silero_vad()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        theirs = {}
        for name, audio in recordings.items():
            model.reset_states()
            theirs[name] = []
            for start in range(0, len(audio), 512):
                chunk = audio[start : start + 512]
                if len(chunk) < 512:
                    chunk = torch.nn.functional.pad(chunk, (0, 512 - len(chunk)))
                theirs[name].append(model(chunk, 16000).item())
    finally:
        torch.set_num_threads(threads)
    return theirs, {name: ours.speech_probabilities(audio) for name, audio in recordings.items()}


def test_probabilities_are_the_package_s_bit_for_bit(probabilities):
    """The windows' STFT, encoder and output layer run as one batch, only the
    LSTM window by window, and still give the package's numbers exactly."""
    theirs, ours = probabilities
    assert voice_activity.load_silero_vad().runs_windows_together
    assert ours == theirs


def test_another_model_runs_window_by_window(silero, tmp_path):
    """A model with Silero's weights inside but another forward (another version,
    say) fails the check at load: its own forward runs, window by window, with
    its state."""
    _, model = silero

    class Lookalike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self._model = model._model  # Silero's weight names and shapes
            self.register_buffer("windows", torch.zeros(1))

        @torch.jit.export
        def reset_states(self):
            self.windows = torch.zeros(1)

        def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
            self.windows = self.windows + 1
            return torch.sigmoid(x.abs().mean() * 30 - 3 + 0.01 * self.windows).reshape(1, 1)

    torch.jit.script(Lookalike()).save(str(tmp_path / "lookalike.jit"))
    ours = voice_activity.load_silero_vad(tmp_path / "lookalike.jit")
    assert not ours.runs_windows_together
    audio = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, 512 * 5 + 300).astype(np.float32))
    lookalike = torch.jit.load(str(tmp_path / "lookalike.jit"))
    want = []
    for start in range(0, len(audio), 512):
        chunk = torch.nn.functional.pad(audio[start : start + 512], (0, max(0, start + 512 - len(audio))))
        want.append(lookalike(chunk, 16000).item())
    assert ours.speech_probabilities(audio) == want
    assert ours.speech_probabilities(audio) == want  # the state starts afresh each time


# The package's defaults (threshold 0.5, min_speech 250 ms, min_silence 100 ms, pad 30 ms,
# the longest silence for a cut at max speech), then others.
PACKAGE = dict(min_speech_duration_ms=250, min_silence_duration_ms=100, speech_pad_ms=30,
               use_max_poss_sil_at_max_speech=True)  # fmt: skip
CASES = [
    {},
    dict(max_speech_duration_s=3.0),
    dict(max_speech_duration_s=3.0, use_max_poss_sil_at_max_speech=False),
    dict(threshold=0.3, neg_threshold=0.2, min_silence_duration_ms=600, speech_pad_ms=250),
    dict(threshold=0.8, min_speech_duration_ms=1000, speech_pad_ms=0),
    dict(max_speech_duration_s=1.5, min_silence_at_max_speech_ms=40),
]


def test_speech_timestamps_are_the_package_s(silero, recordings):
    """The whole of the package's get_speech_timestamps against this library's."""
    package, model = silero
    threads = torch.get_num_threads()
    for name, audio in recordings.items():
        torch.set_num_threads(1)
        want = package.get_speech_timestamps(audio, model, **PACKAGE)
        torch.set_num_threads(threads)
        assert voice_activity.speech_timestamps(audio, **PACKAGE) == want, name


@pytest.mark.parametrize("case", range(len(CASES)))
def test_speech_ranges_are_the_package_s(silero, recordings, probabilities, case):
    """Each option set over each recording's probabilities: the package's
    get_speech_timestamps_from_probs (what its get_speech_timestamps runs after
    the model) and this library's."""
    package, _ = silero
    theirs_probabilities, ours_probabilities = probabilities
    options = {**PACKAGE, **CASES[case]}
    theirs = {k.replace("min_silence_at_max_speech_ms", "min_silence_at_max_speech"): v for k, v in options.items()}
    for name, audio in recordings.items():
        want = package.get_speech_timestamps_from_probs(
            theirs_probabilities[name], audio_length_samples=len(audio), **theirs
        )
        got = _C._speech_ranges_from_probabilities(ours_probabilities[name], len(audio), options)
        assert got == want, name
        if name == "speech":
            assert len(got) >= 2
        if name == "silence":
            assert got == []


def test_ranges_from_probabilities_are_the_package_s(silero):
    """Random probability runs through the state machine (cuts at max speech,
    silences of every length), against the package's own function."""
    package, _ = silero
    rng = np.random.default_rng(1)
    for trial in range(40):
        runs = [rng.uniform(0, 1) * np.ones(rng.integers(1, 40)) for _ in range(30)]
        probabilities = np.clip(np.concatenate(runs) + rng.normal(0, 0.1, sum(map(len, runs))), 0, 1)
        probabilities = [float(np.float32(p)) for p in probabilities]
        samples = len(probabilities) * 512 - int(rng.integers(0, 512))
        options = {**PACKAGE, **CASES[trial % len(CASES)]}
        theirs = {k.replace("min_silence_at_max_speech_ms", "min_silence_at_max_speech"): v for k, v in options.items()}
        want = package.get_speech_timestamps_from_probs(probabilities, audio_length_samples=samples, **theirs)
        assert _C._speech_ranges_from_probabilities(probabilities, samples, options) == want


def test_the_time_map_is_faster_whisper_s():
    from faster_whisper.vad import SpeechTimestampsMap

    rng = np.random.default_rng(2)
    for _ in range(20):
        edges = np.sort(rng.choice(np.arange(0, 16000 * 60), size=2 * int(rng.integers(1, 6)), replace=False))
        ranges = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
        theirs = SpeechTimestampsMap([{"start": a, "end": b} for a, b in ranges], 16000)
        joined = sum(b - a for a, b in ranges) / 16000
        ends = np.cumsum([b - a for a, b in ranges]) / 16000
        for t in [*rng.uniform(0, joined, 30), *ends, 0.0]:
            t = float(t)
            for is_end in (False, True):
                assert _C._original_time(ranges, t, None, is_end) == theirs.get_original_time(t, is_end=is_end)
            index = theirs.get_chunk_index(t)
            assert _C._original_time(ranges, t, index, False) == theirs.get_original_time(t, index)


def test_vad_filter_maps_times_as_faster_whisper_does(tiny_en, recordings):  # noqa: F811
    """transcribe(vad_filter=True) is the transcription of the speech alone, its
    segments' and words' times mapped back by faster-whisper's own
    restore_speech_timestamps."""
    from faster_whisper.transcribe import Segment, Word, restore_speech_timestamps

    _, model = tiny_en
    audio = recordings["speech"]
    vad = dict(min_silence_duration_ms=500, speech_pad_ms=100)
    ranges = voice_activity.speech_timestamps(audio, **vad)
    assert len(ranges) >= 2
    joined = torch.cat([audio[r["start"] : r["end"]] for r in ranges])
    for words in (True,):  # (a segment's own times through the map: test_the_time_map_is_faster_whisper_s)
        plain = model.transcribe(joined, word_timestamps=words)
        got = model.transcribe(audio, word_timestamps=words, vad_filter=True, vad_parameters=vad)
        assert got["text"] == plain["text"]
        segments = [
            Segment(**{k: s[k] for k in ("id", "seek", "start", "end", "text", "tokens", "avg_logprob",
                                         "compression_ratio", "no_speech_prob", "temperature")},
                    words=[Word(**w) for w in s["words"]] if words else None)
            for s in plain["segments"]
        ]  # fmt: skip
        want = list(restore_speech_timestamps(segments, ranges, 16000))
        assert [(s["start"], s["end"]) for s in got["segments"]] == [(s.start, s.end) for s in want]
        if words:
            got_words = [(w["word"], w["start"], w["end"]) for s in got["segments"] for w in s["words"]]
            assert got_words == [(w.word, w.start, w.end) for s in want for w in s.words]
            assert got["segments"][0]["start"] >= 4.0  # after the leading silence


def normalized_words(text):
    return [w.strip(".,!?;:\"'").lower() for w in text.split()]


def test_vad_filter_transcript_has_faster_whisper_s_words(tiny_en, recordings):  # noqa: F811
    """faster-whisper's transcribe(vad_filter=True) of the same audio with the same
    weights (its VAD runs Silero through onnxruntime; ranges may differ by a window),
    beam 5, no fallback: the same words."""
    from faster_whisper import WhisperModel

    _, model = tiny_en
    audio = recordings["speech"]
    rival = WhisperModel(str(real_data.DATA / "ct2-tiny.en"), device="cpu", compute_type="float32", cpu_threads=1)
    options = dict(beam_size=5, temperature=0.0, condition_on_previous_text=True, vad_filter=True)
    segments, info = rival.transcribe(audio.numpy(), language="en", **options)
    want = " ".join(s.text for s in segments)
    assert info.duration_after_vad < info.duration - 3  # silences removed
    got = model.transcribe(audio, **options)["text"]
    assert normalized_words(got) == normalized_words(want)
    assert "country" in normalized_words(got)


def test_a_file_that_is_not_silero_is_refused(tmp_path):
    class NotSilero(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    torch.jit.script(NotSilero()).save(str(tmp_path / "other.jit"))
    with pytest.raises(RuntimeError, match="not Silero VAD's"):
        voice_activity.load_silero_vad(tmp_path / "other.jit")
    (tmp_path / "text.jit").write_text("not a model")
    with pytest.raises(RuntimeError, match="is not a TorchScript model"):
        voice_activity.load_silero_vad(tmp_path / "text.jit")


def test_vad_options_are_faster_whisper_s():
    from faster_whisper.vad import VadOptions

    theirs = dataclasses.asdict(VadOptions())
    assert {k: voice_activity.VAD_OPTIONS[k] for k in theirs} == theirs
    assert os.path.exists(voice_activity.silero_vad_path())
