"""The writers against whisper.utils' (`get_writer`) on the same result, byte for
byte, and the `rotary-whisper` command against openai-whisper's command-line
defaults (beam 5, best_of 5, temperature fallback) on Whisper tiny.en and real
speech; bad files and options."""

import json
import math
import os
import shutil
import subprocess
import wave

import numpy as np
import pytest
import whisper
import whisper.utils
from test_transcribe import read_wav, real_data
from test_whisper_fork import COMMAND

from rotary_attention import _C

FORMATS = ["txt", "vtt", "srt", "tsv", "json"]


def whisper_files(result, tmp_path, name="audio.wav"):
    folder = tmp_path / "whisper-out"
    folder.mkdir(exist_ok=True)
    whisper.utils.get_writer("all", str(folder))(result, name)
    return {f: (folder / f"{os.path.splitext(name)[0]}.{f}").read_bytes() for f in FORMATS}


def crafted_result():
    """Texts and times the writers must escape, round and format as whisper does."""
    segments = [
        dict(start=0.0, end=7.74, text=" Plain text, with a comma.", tokens=[1, 2, 3], temperature=0.0,
             avg_logprob=-0.37750123456789, compression_ratio=1.2, no_speech_prob=1e-05),
        dict(start=13.040000000000001, end=20.0, text=" Tabs\there --> arrows \"quoted\" back\\slash",
             tokens=[], temperature=0.2, avg_logprob=-1.5e-07, compression_ratio=2.4000000000000004,
             no_speech_prob=0.6),
        dict(start=59.9995, end=3600.0005, text=" Ünïcödé 東京 😀 ♪ \u007f end", tokens=[50257],
             temperature=1.0, avg_logprob=-12345678901234567.0, compression_ratio=0.5, no_speech_prob=0.0),
        dict(start=3723.4564999, end=3725.0, text="   ", tokens=[7], temperature=0.6000000000000001,
             avg_logprob=float("nan"), compression_ratio=float("inf"), no_speech_prob=0.12345),
    ]  # fmt: skip
    return {
        "text": "".join(s["text"] for s in segments),
        "segments": [{"id": i, "seek": 100 * i, **s} for i, s in enumerate(segments)],
        "language": "en",
    }


@pytest.fixture(scope="module")
def tiny_en_result():
    """whisper's result on real speech over three windows (the long recording's
    first 75 s: several segments, times past a minute)."""
    model = whisper.load_model(real_data.whisper_model("tiny.en"))
    return whisper.transcribe(model, read_wav(real_data.speech()["long"])[: 75 * 16000], fp16=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_writers_are_byte_equal_to_whisper(tiny_en_result, tmp_path, fmt):
    assert len(tiny_en_result["segments"]) >= 5 and tiny_en_result["segments"][-1]["end"] > 60
    for result in (tiny_en_result, crafted_result(), {"text": "", "segments": [], "language": "en"}):
        want = whisper_files(result, tmp_path)[fmt]
        assert _C._format_transcription(result, fmt) == want


def test_writers_refuse_a_bad_format():
    with pytest.raises(RuntimeError, match="output_format: expected txt, vtt, srt, tsv, json or all"):
        _C._format_transcription({"text": "", "segments": [], "language": "en"}, "doc")


def run(*args, **kwargs):
    return subprocess.run([COMMAND, *map(str, args)], capture_output=True, text=True, **kwargs)


def test_command_equals_whisper_command_defaults(tmp_path):
    """Whisper's command-line defaults (beam 5, best_of 5, fallback), every
    format, on JFK; the segments it prints; a silent file gets empty outputs;
    an unreadable and an empty file are errors naming them while the others
    are transcribed, and leave nothing in the output folder."""
    checkpoint = real_data.whisper_model("tiny.en")
    jfk = tmp_path / "jfk.wav"
    shutil.copy(real_data.speech()["jfk"], jfk)
    silence = tmp_path / "silence.wav"
    with wave.open(str(silence), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 3, "<i2").tobytes())
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file")
    out = tmp_path / "out"
    done = run("--model", checkpoint, "--output_dir", out, jfk, empty, garbage, silence)
    assert done.returncode == 1
    assert f"rotary-whisper: {empty}:" in done.stderr and f"rotary-whisper: {garbage}:" in done.stderr
    assert sorted(os.listdir(out)) == sorted([f"{s}.{f}" for s in ("jfk", "silence") for f in FORMATS])

    model = whisper.load_model(checkpoint)
    options = dict(beam_size=5, best_of=5, temperature=(0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0))
    want = whisper.transcribe(model, read_wav(jfk), fp16=False, **options)
    expected = whisper_files(want, tmp_path, "jfk.wav")
    for fmt in ("txt", "vtt", "srt", "tsv"):
        assert (out / f"jfk.{fmt}").read_bytes() == expected[fmt]
    got = json.loads((out / "jfk.json").read_text())
    assert got["text"] == want["text"] and len(got["segments"]) == len(want["segments"])
    for g, w in zip(got["segments"], want["segments"], strict=True):
        assert {k: g[k] for k in ("id", "seek", "start", "end", "text", "tokens")} == {
            k: w[k] for k in ("id", "seek", "start", "end", "text", "tokens")
        }
        assert math.isclose(g["avg_logprob"], w["avg_logprob"], abs_tol=1e-4)
    printed = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert printed[: len(want["segments"])] == [
        f"[{whisper.utils.format_timestamp(s['start'])} --> {whisper.utils.format_timestamp(s['end'])}] {s['text']}"
        for s in want["segments"]
    ]
    assert (out / "silence.txt").read_bytes() == whisper_files(
        whisper.transcribe(model, read_wav(silence), fp16=False, **options), tmp_path, "silence.wav"
    )["txt"]


def test_command_finds_the_vocabulary_and_refuses_bad_input(tmp_path):
    checkpoint = real_data.whisper_model("tiny.en")
    jfk = real_data.speech()["jfk"]
    # No --tokenizer: found in the installed openai-whisper; --verbose False prints nothing.
    done = run("--model", checkpoint, "-o", tmp_path, "-f", "txt", "--verbose", "False", "--beam_size", "None", jfk)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "ask not what your country can do for you" in (tmp_path / "jfk.txt").read_text().replace(",", "")
    # A truncated checkpoint: one line, and nothing written.
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: 1 << 20])
    done = run("--model", truncated, "-o", tmp_path / "none", jfk)
    assert done.returncode == 2 and done.stderr.startswith("rotary-whisper: ") and str(truncated) in done.stderr
    assert not (tmp_path / "none").exists()
    for bad in (["--temperature_increment_on_fallback", "0"], ["--beam_size", "five"],
                ["--condition_on_previous_text", "yes"]):  # fmt: skip
        done = run("--model", checkpoint, "-o", tmp_path / "none", *bad, jfk)
        assert done.returncode != 0 and bad[0] in done.stderr + done.stdout, bad
        assert not (tmp_path / "none").exists()


def test_command_writes_words_as_whisper_does(tmp_path):
    """--word_timestamps True with the subtitle options: the srt and vtt files of
    whisper's writers over whisper.transcribe's words (openai's alignment heads for
    tiny.en), and the words in the json; the word options without word
    timestamps and bad alignment heads are refused."""
    checkpoint = real_data.whisper_model("tiny.en")
    jfk = tmp_path / "jfk.wav"
    shutil.copy(real_data.speech()["jfk"], jfk)
    writer = dict(highlight_words=True, max_line_width=24, max_line_count=2)
    flags = [text for name, value in writer.items() for text in (f"--{name}", str(value))]
    out = tmp_path / "out"
    greedy = ["--beam_size", "None"]
    done = run(
        "--model", checkpoint, "-o", out, "--verbose", "False", "--word_timestamps", "True", *greedy, *flags, jfk
    )
    assert done.returncode == 0, done.stderr
    model = whisper.load_model(checkpoint)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    options = dict(best_of=5, temperature=(0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0))
    want = whisper.transcribe(model, read_wav(jfk), fp16=False, word_timestamps=True, **options)
    folder = tmp_path / "whisper-out"
    folder.mkdir()
    whisper.utils.get_writer("all", str(folder))(want, "jfk.wav", **writer)
    for fmt in ("srt", "vtt", "txt", "tsv"):
        assert (out / f"jfk.{fmt}").read_bytes() == (folder / f"jfk.{fmt}").read_bytes(), fmt
    assert "<u>" in (out / "jfk.srt").read_text()
    got = json.loads((out / "jfk.json").read_text())
    words = [(w["word"], w["start"], w["end"]) for s in got["segments"] for w in s["words"]]
    assert words == [(w["word"], w["start"], w["end"]) for s in want["segments"] for w in s["words"]]
    for bad, error in ((["--highlight_words", "True"], "--highlight_words: requires --word_timestamps True"),
                       (["--word_timestamps", "True", "--alignment_heads", "9,0"], "outside the decoder's"),
                       (["--word_timestamps", "True", "--alignment_heads", "base"], "openai's base has")):  # fmt: skip
        done = run("--model", checkpoint, "-o", tmp_path / "none", *bad, jfk)
        assert done.returncode != 0 and error in done.stderr + done.stdout, (bad, done.stderr)
        assert not (tmp_path / "none").exists()


def test_command_filters_speech_with_silero_vad(tmp_path):
    """--vad_filter True with --vad_parameters: the segments of the Python face's
    transcribe(vad_filter=True) at the same settings, times in the original audio;
    a bad parameter and a model file that is not Silero's are refused."""
    import torch

    import rotary_attention.cpp

    checkpoint = real_data.whisper_model("tiny.en")
    samples = np.concatenate([np.zeros(16000 * 5, np.float32), read_wav(real_data.speech()["jfk"])])
    path = tmp_path / "padded.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((samples * 32768).astype("<i2").tobytes())
    out = tmp_path / "out"
    flags = ["--beam_size", "None", "--vad_filter", "True", "--vad_parameters", "min_silence_duration_ms=500"]
    done = run("--model", checkpoint, "-o", out, "-f", "json", "--verbose", "False", *flags, path)
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "padded.json").read_text())
    model = rotary_attention.cpp.Whisper.load(checkpoint)
    want = model.transcribe(
        torch.from_numpy(read_wav(path)), vad_filter=True, vad_parameters={"min_silence_duration_ms": 500}
    )
    assert [(s["start"], s["end"], s["text"]) for s in got["segments"]] == [
        (s["start"], s["end"], s["text"]) for s in want["segments"]
    ]
    assert got["segments"][0]["start"] >= 4.5  # after the leading 5 s of silence
    for bad, error in ((["--vad_parameters", "thresh=0.3"], "expected name=value,... of VadOptions"),
                       (["--vad_model", str(path)], "is not a TorchScript model")):  # fmt: skip
        done = run("--model", checkpoint, "-o", tmp_path / "none", "--vad_filter", "True", *bad, path)
        assert done.returncode != 0 and error in done.stderr + done.stdout, (bad, done.stderr)
        assert not (tmp_path / "none").exists()
