"""The code in docs/whisper.md runs: its shell and Python blocks in a folder holding a
random fork's checkpoint, a vocabulary and a WAV file; its C++ block is part of
examples/transcribe.cpp, which runs too."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from test_whisper_fork import MULTILINGUAL, make_fork, original_decode, tones, write_wav
from whisper.decoding import DecodingOptions
from whisper.utils import format_timestamp

from rotary_attention import _C

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BUILD_DIR = os.environ.get("RA_BUILD_DIR", os.path.join(ROOT, "build"))
PAGE = os.path.join(ROOT, "docs", "whisper.md")


def blocks(language):
    with open(PAGE) as f:
        return re.findall(rf"```{language}\n(.*?)```", f.read(), flags=re.S)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """fork.pt (an encoder for 30 s of audio), multilingual.tiktoken and speech.wav, and
    whisper.decode's results for the file over the original: greedy and beam 5, in English."""
    import whisper.audio

    path = tmp_path_factory.mktemp("docs")
    original = make_fork(path / "fork.pt", seed=4, n_audio_ctx=1500, n_text_ctx=64)
    os.symlink(MULTILINGUAL, path / "multilingual.tiktoken")
    pcm = write_wav(path / "speech.wav", tones(5.0, 16000), 16000)
    audio = torch.from_numpy(pcm[:, 0].astype("float32") / 32768.0)
    mel = whisper.audio.log_mel_spectrogram(whisper.audio.pad_or_trim(audio))
    greedy = original_decode(original, mel, DecodingOptions(fp16=False, language="en"))
    beam = original_decode(original, mel, DecodingOptions(fp16=False, language="en", beam_size=5))
    return path, greedy, beam


def test_the_python_blocks_run_and_decode_as_whisper(folder, monkeypatch):
    """The C++ fork (greedy), then openai-whisper's loop over the C++ decoder (beam 5)."""
    path, greedy, beam = folder
    _, cpp_fork, whisper_loop = blocks("python")
    monkeypatch.chdir(path)
    namespace = {}
    exec(compile(cpp_fork, PAGE, "exec"), namespace)
    assert namespace["result"].tokens == greedy.tokens and namespace["result"].text == greedy.text
    assert len(namespace["results"]) == 2
    namespace = {}
    exec(compile(whisper_loop, PAGE, "exec"), namespace)
    assert namespace["result"].tokens == beam.tokens and namespace["result"].text == beam.text


def test_the_shell_block_runs(folder):
    """Both commands: every format into the folder, then srt files into subtitles/,
    the segments printed by the first only (--verbose False)."""
    path, _, _ = folder
    (code,) = blocks("bash")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    run = subprocess.run(["bash", "-euc", code], cwd=path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((path / "speech.json").read_text())
    assert result["language"] == "en" and result["segments"]
    assert run.stdout.splitlines() == [
        f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] {s['text']}" for s in result["segments"]
    ]
    for f in ("txt", "vtt", "srt", "tsv"):
        assert (path / f"speech.{f}").read_bytes() == _C._format_transcription(result, f)
    # (Written twice: the second transcription's samples follow the first's in
    # the generator's stream, as in whisper's command.)
    assert (path / "subtitles" / "speech.srt").read_text().startswith("1\n00:00:")


def test_the_cpp_block_is_the_example_program_which_runs(folder):
    path, _, beam = folder
    with open(os.path.join(ROOT, "examples", "transcribe.cpp")) as f:
        body = [line.strip() for line in f.read().splitlines()]
    for code in blocks("cpp"):
        lines = [line.strip() for line in code.strip().splitlines()]
        assert any(body[i : i + len(lines)] == lines for i in range(len(body))), code
    exe = os.path.join(BUILD_DIR, "examples", "transcribe")
    assert os.path.exists(exe), f"{exe} is missing: build with scripts/test.sh (or set RA_BUILD_DIR)"
    run = subprocess.run([exe, "fork.pt", "multilingual.tiktoken", "speech.wav"], cwd=path, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{beam.text}  ({len(beam.tokens)} tokens, avg_logprob "), run.stdout


def test_the_word_subtitle_example_is_what_the_command_writes(tmp_path):
    """The srt excerpt under "Word timestamps", from the command shown above it, run on
    the real tiny.en and JFK (scripts/real_data.py)."""
    with open(PAGE) as f:
        page = f.read()
    command, excerpt = re.search(
        r"```\n(rotary-whisper [^`]*--highlight_words[^`]*)```\n.*?```\n(.*?)\n\.\.\.\n```", page, flags=re.S
    ).groups()
    args = command.replace("\\\n", " ").split()[1:]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    run = subprocess.run(
        ["rotary-whisper", *args, "-o", str(tmp_path), "--verbose", "False"], cwd=ROOT, env=env, capture_output=True
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "jfk.srt").read_text().startswith(excerpt + "\n\n")


def test_the_vad_block_runs_and_gives_the_package_s_ranges(folder, monkeypatch):
    """The voice-activity example, against silero-vad's get_speech_timestamps with
    faster-whisper's defaults."""
    path, _, _ = folder
    vad_example = blocks("python")[0]
    monkeypatch.chdir(path)
    namespace = {}
    exec(compile(vad_example, PAGE, "exec"), namespace)
    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    audio = namespace["load_audio"]("speech.wav")
    want = silero_vad.get_speech_timestamps(
        audio, silero_vad.load_silero_vad(), min_speech_duration_ms=0, min_silence_duration_ms=500, speech_pad_ms=400
    )
    torch.set_num_threads(threads)
    assert namespace["ranges"] == want
