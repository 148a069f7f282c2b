"""The Whisper fork in C++ (`rotary_attention.cpp.Whisper`, the `rotary-whisper`
command) against openai-whisper run on the original layers in the same process:
a small random fork saved as openai-whisper saves it, decoded by `whisper.decode`
and by the C++ loop; the C++ front end against `whisper.audio`; the tokenizer
against whisper's own."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
import whisper
import whisper.audio
import whisper.model
import whisper.tokenizer
from whisper.decoding import DecodingOptions

import rotary_attention.cpp
from conftest import original_sdpa, outputs_of_each_cpu_build
from rotary_attention import reference, whisper_model
from rotary_attention.whisper_inference import whisper_attention_class

ASSETS = os.path.join(os.path.dirname(whisper.__file__), "assets")
MULTILINGUAL = os.path.join(ASSETS, "multilingual.tiktoken")
GPT2 = os.path.join(ASSETS, "gpt2.tiktoken")
COMMAND = os.path.join(os.path.dirname(sys.executable), "rotary-whisper")

# n_audio_ctx > n_text_ctx, as Whisper's hooks assume (they tell cross-attention by its length).
SMALL = dict(n_mels=80, n_audio_ctx=40, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
             n_text_ctx=32, n_text_state=64, n_text_head=4, n_text_layer=2)  # fmt: skip


def make_fork(path, n_vocab=51865, seed=1, **dims):
    """A random fork (the original's attention in whisper.model.Whisper), saved as
    openai-whisper saves a checkpoint; returns the in-memory original."""
    dims = whisper.model.ModelDimensions(**{**SMALL, **dims, "n_vocab": n_vocab})
    torch.manual_seed(0)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow):
        original = whisper.model.Whisper(dims).eval()
    reference.randomize_weights_(original, seed)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": original.state_dict()}, path)
    return original


def original_decode(original, mel, options):
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow), original_sdpa(True):
        return whisper.decode(original, mel, options)


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "multilingual.pt"
    original = make_fork(path)
    return original, rotary_attention.cpp.Whisper.load(path, tokenizer=MULTILINGUAL), path


@pytest.fixture(scope="module")
def english_only(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "english.pt"
    original = make_fork(path, n_vocab=51864, seed=3)
    return original, rotary_attention.cpp.Whisper.load(path, tokenizer=GPT2), path


def audio_features(n_audio, seed=2):
    """Large random features: a random decoder's tokens then depend on them."""
    g = torch.Generator().manual_seed(seed)
    return 20 * torch.randn(n_audio, SMALL["n_audio_ctx"], SMALL["n_audio_state"], generator=g)


def mel_frames(n_audio):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n_audio, SMALL["n_mels"], 2 * SMALL["n_audio_ctx"], generator=g)


BASE = dict(fp16=False)
CASES = {
    "greedy, a batch of 2 through the encoder": (mel_frames(2), dict(language="en")),
    "greedy, a batch of 2": (audio_features(2), dict(language="en")),
    "greedy without timestamps": (audio_features(2), dict(language="en", without_timestamps=True)),
    "greedy, no initial timestamp limit": (audio_features(2), dict(language="en", max_initial_timestamp=None)),
    "beam search 5": (audio_features(1), dict(language="en", beam_size=5)),
    "beam search 5 without timestamps": (audio_features(1), dict(language="en", beam_size=5, without_timestamps=True)),
    "beam search, patience 2 and length penalty": (
        audio_features(1),
        dict(language="en", beam_size=4, patience=2.0, length_penalty=0.6),
    ),
    "language detected": (audio_features(2, seed=7), dict(language=None)),
    "language detected, beam search": (audio_features(1, seed=7), dict(language=None, beam_size=3)),
    "translate": (audio_features(2), dict(language="de", task="translate")),
    "a prompt and a prefix": (audio_features(2), dict(language="en", prompt=[1, 500, 2000], prefix=[440, 7])),
    "suppress listed tokens, no blank suppression": (
        audio_features(2),
        dict(language="fr", suppress_tokens="11,13,-1", suppress_blank=False),
    ),
    "nothing suppressed, sample_len 5": (audio_features(2), dict(language="en", suppress_tokens="", sample_len=5)),
}


def assert_same_results(got, want):
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.language for r in got] == [r.language for r in want]
    for g, w in zip(got, want, strict=True):
        # The C++ model computes the original's logits bit for bit: what differs is
        # the softmax's summation over the vocabulary (fp32 rounding).
        assert g.no_speech_prob == pytest.approx(w.no_speech_prob, rel=1e-5, abs=1e-9)
        assert g.avg_logprob == pytest.approx(w.avg_logprob, abs=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_decode_gives_whisper_decode_results_over_the_original(case, multilingual):
    original, fork, _ = multilingual
    inputs, options = CASES[case]
    options = DecodingOptions(**BASE, **options)
    want = original_decode(original, inputs, options)
    got = fork.decode(inputs, options)
    assert any(len(set(r.tokens)) > 2 for r in want), "the random fork must decode varied tokens"
    assert_same_results(got, want)


@pytest.fixture(scope="module")
def early_ending(tmp_path_factory):
    """A fork whose final norm leans toward the end-of-text token: sequences end after
    a few tokens, at different steps, so a beam search's finished candidates (and its
    patience) decide the result."""
    path = tmp_path_factory.mktemp("fork") / "ending.pt"
    original = make_fork(path)
    with torch.no_grad():
        eot = original.decoder.token_embedding.weight[50257]
        original.decoder.ln.bias.add_(1.15 * eot / eot.norm())
    torch.save({"dims": dataclasses.asdict(original.dims), "model_state_dict": original.state_dict()}, path)
    return original, rotary_attention.cpp.Whisper.load(path, tokenizer=MULTILINGUAL)


# (beam_size, patience, length_penalty); greedy first: its first token would be the end of
# text but for the blank suppression.
ENDING = [(None, None, None), (3, None, None), (5, None, None), (3, 2.0, None), (5, 2.0, None), (5, 1.5, 0.3),
          (4, 3.0, 1.0)]  # fmt: skip


@pytest.mark.parametrize(("beam_size", "patience", "length_penalty"), ENDING)
def test_decode_gives_whisper_decode_results_when_beams_finish_early(beam_size, patience, length_penalty, early_ending):
    original, fork = early_ending
    options = DecodingOptions(fp16=False, language="en", without_timestamps=True, beam_size=beam_size,
                              patience=patience, length_penalty=length_penalty)  # fmt: skip
    features = audio_features(2 if beam_size is None else 1)
    assert_same_results(fork.decode(features, options), original_decode(original, features, options))


def test_an_empty_candidate_ranks_last_where_whisper_divides_by_zero(early_ending):
    """Without the blank suppression this fork ends at once: the candidate has no token,
    and whisper's length normalisation divides by zero (ZeroDivisionError); the C++
    ranker scores it -inf, so it is chosen only when it is the only one."""
    original, fork = early_ending
    options = DecodingOptions(fp16=False, language="en", without_timestamps=True, suppress_blank=False)
    with pytest.raises(ZeroDivisionError):
        original_decode(original, audio_features(2), options)
    got = fork.decode(audio_features(2), options)
    assert got[1].tokens == [] and got[1].text == "" and math.isfinite(got[1].avg_logprob)


def test_the_early_ending_cases_depend_on_finished_candidates(early_ending):
    original, _ = early_ending
    lengths = {
        (beam, patience): len(
            original_decode(original, audio_features(1), DecodingOptions(
                fp16=False, language="en", without_timestamps=True, beam_size=beam, patience=patience))[0].tokens)
        for beam, patience, _ in ENDING
    }  # fmt: skip
    assert lengths[(3, None)] != lengths[(3, 2.0)] and lengths[(5, None)] != lengths[(5, 2.0)], lengths
    blank = DecodingOptions(fp16=False, language="en", without_timestamps=True, suppress_blank=False)
    with pytest.raises(ZeroDivisionError):  # an empty candidate: the first token would end it
        original_decode(original, audio_features(2), blank)
    assert max(lengths.values()) < 16  # the end of text, not sample_len, ends them


def test_decode_takes_keyword_options_and_a_2d_input(multilingual):
    original, fork, _ = multilingual
    features = audio_features(1)[0]
    want = original_decode(original, features, DecodingOptions(fp16=False, language="en", beam_size=2))
    got = fork.decode(features, language="en", beam_size=2)
    assert isinstance(got, whisper_model.DecodingResult)
    assert_same_results([got], [want])
    assert got.compression_ratio == pytest.approx(want.compression_ratio)


def test_an_english_only_fork_decodes_with_gpt2_vocabulary(english_only):
    original, fork, _ = english_only
    for options in (
        DecodingOptions(fp16=False, language="en"),
        DecodingOptions(fp16=False, beam_size=3, language="en"),
    ):
        n = 1 if options.beam_size else 2
        assert_same_results(
            fork.decode(audio_features(n), options), original_decode(original, audio_features(n), options)
        )
    with pytest.raises(RuntimeError, match="language tokens"):
        fork.decode(audio_features(1), fp16=False)  # whisper raises too: nothing to detect with


def test_the_cases_see_the_audio_beam_and_options(multilingual):
    """The comparisons above can fail: audios decode differently, and the options change the tokens."""
    _, fork, _ = multilingual
    greedy = fork.decode(audio_features(2), language="en")
    assert greedy[0].tokens != greedy[1].tokens
    assert fork.decode(audio_features(1), language="en", beam_size=5)[0].tokens != greedy[0].tokens
    assert fork.decode(audio_features(2), language="en", without_timestamps=True)[0].tokens != greedy[0].tokens
    detected = fork.decode(audio_features(2, seed=7))
    assert {r.language for r in detected} != {"en"}


# The front end


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_whisper_s(n_mels):
    want = whisper.audio.mel_filters("cpu", n_mels)
    torch.testing.assert_close(whisper_model.mel_filters(n_mels), want, rtol=1e-6, atol=1e-7)


def tones(seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1330 * t) * (t > seconds / 3)
    right = 0.25 * np.sin(2 * np.pi * 660 * t)
    signal = np.stack([left, right], 1)[:, :channels] if channels > 1 else left[:, None]
    return signal.astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_spectrogram_is_whisper_s(n_mels):
    audio = torch.from_numpy(tones(4.5, 16000)[:, 0]) + 0.01 * torch.randn(
        72000, generator=torch.Generator().manual_seed(0)
    )
    for padding in (0, 1234):
        want = whisper.audio.log_mel_spectrogram(audio, n_mels, padding=padding)
        got = whisper_model.log_mel_spectrogram(audio, n_mels, padding=padding)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    padded = whisper.audio.pad_or_trim(audio)
    torch.testing.assert_close(whisper_model.pad_or_trim(audio), padded, rtol=0, atol=0)
    torch.testing.assert_close(whisper_model.pad_or_trim(padded[:1000], 300), padded[:300], rtol=0, atol=0)


def write_wav(path, samples, rate):
    """16-bit PCM, channels interleaved."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(samples.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return pcm


def test_load_audio_reads_16_bit_samples_as_whisper_does(tmp_path):
    pcm = write_wav(tmp_path / "a.wav", tones(1.0, 16000), 16000)
    got = whisper_model.load_audio(tmp_path / "a.wav")
    # whisper's ffmpeg call gives int16 / 32768.
    torch.testing.assert_close(got, torch.from_numpy(pcm[:, 0].astype(np.float32) / 32768.0), rtol=0, atol=0)


def resampled_mel_distance(tmp_path):
    """How far a 44.1-kHz stereo file's mel (mixed to mono, resampled by libsoxr)
    lies from whisper's mel of the same signal synthesized at 16 kHz."""
    write_wav(tmp_path / "stereo.wav", tones(3.0, 44100, channels=2), 44100)
    audio = whisper_model.load_audio(tmp_path / "stereo.wav")
    direct = tones(3.0, 16000, channels=2).mean(1)
    assert abs(audio.shape[0] - direct.shape[0]) <= 1
    n = min(audio.shape[0], direct.shape[0])
    got = whisper_model.log_mel_spectrogram(whisper_model.pad_or_trim(audio[:n]))
    want = whisper.audio.log_mel_spectrogram(whisper.audio.pad_or_trim(torch.from_numpy(direct[:n].copy())))
    return (got - want).abs()


def test_a_44_khz_stereo_file_is_mixed_and_resampled_close_to_whisper_s_mel(tmp_path):
    distance = resampled_mel_distance(tmp_path)
    # README ("The whole fork"): the figures this test prints.
    # Most of the mel is within 1e-3; the largest differences lie in the bins
    # near 8 kHz (libsoxr's anti-aliasing filter) and at the signal's ends.
    q999 = distance.flatten().kthvalue(int(0.999 * distance.numel())).values
    print(f"44.1 kHz stereo vs 16 kHz: max {distance.max():.3f}, 99.9% {q999:.4f}, mean {distance.mean():.1e}")
    assert distance.mean() < 1e-3 and q999 < 0.05 and distance.max() < 0.5


# The tokenizer


@pytest.mark.parametrize("multilingual_vocabulary", [True, False], ids=["multilingual", "gpt2"])
def test_tokenizer_is_whisper_s(multilingual_vocabulary):
    num_languages = 99 if multilingual_vocabulary else 99
    path = MULTILINGUAL if multilingual_vocabulary else GPT2
    want = whisper.tokenizer.get_tokenizer(
        multilingual_vocabulary, num_languages=num_languages, language="de", task="translate"
    )
    got = rotary_attention._C._WhisperTokenizer(path, num_languages)
    assert got.n_vocab == want.encoding.n_vocab
    assert (got.eot, got.sot, got.no_speech, got.timestamp_begin) == (
        want.eot,
        want.sot,
        want.no_speech,
        want.timestamp_begin,
    )
    assert tuple(got.non_speech_tokens()) == want.non_speech_tokens
    if multilingual_vocabulary:
        assert tuple(got.sot_sequence("de", "translate")) == want.sot_sequence
    assert got.encode_piece(b" ") == want.encode(" ")
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        # Random tokens: partial UTF-8 sequences (replaced by U+FFFD), specials, timestamps.
        tokens = torch.randint(0, want.encoding.n_vocab, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g)
        tokens = tokens.tolist()
        assert got.decode(tokens) == want.decode(tokens), tokens
        assert got.decode_with_timestamps(tokens) == want.decode_with_timestamps(tokens), tokens
    bytes_tokens = [t for t in range(256) if len(want.encoding.decode_single_token_bytes(t)) == 1]
    for start in range(0, len(bytes_tokens), 3):
        tokens = bytes_tokens[start : start + 3]
        assert got.decode(tokens) == want.decode(tokens), tokens


# The command


@pytest.fixture(scope="module")
def thirty_second_fork(tmp_path_factory):
    """A fork whose encoder takes 30 s of audio (3000 mel frames), as the command feeds it."""
    path = tmp_path_factory.mktemp("fork") / "fork30.pt"
    return make_fork(path, seed=4, n_audio_ctx=1500, n_text_ctx=64), path


def run_command(*args):
    assert os.access(COMMAND, os.X_OK), f"{COMMAND}: the package's rotary-whisper is not installed"
    return subprocess.run([COMMAND, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("beam_size", [None, 5])
def test_the_command_gives_whisper_transcribe_s_segments_for_a_wav_file(beam_size, thirty_second_fork, tmp_path):
    """The command over a fork's checkpoint against whisper.transcribe run over
    the original layers (temperature 0, no fallback)."""
    original, checkpoint = thirty_second_fork
    pcm = write_wav(tmp_path / "speech.wav", tones(7.0, 16000), 16000)
    audio = torch.from_numpy(pcm[:, 0].astype(np.float32) / 32768.0)  # what whisper.load_audio gives
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow), original_sdpa(True):
        want = whisper.transcribe(original, audio, language="en", beam_size=beam_size, temperature=0.0, fp16=False)
    beam = ["--beam_size", beam_size or "None"]
    run = run_command(
        "--model", checkpoint, "--tokenizer", MULTILINGUAL, "--language", "en", *beam,
        "--temperature_increment_on_fallback", "None", "--output_format", "json", "-o", tmp_path, "--verbose", "False",
        tmp_path / "speech.wav",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "speech.json").read_text())
    assert len(set(want["segments"][0]["tokens"])) > 2
    assert got["text"] == want["text"] and got["language"] == "en"
    for g, w in zip(got["segments"], want["segments"], strict=True):
        assert (g["start"], g["end"], g["tokens"], g["text"]) == (w["start"], w["end"], w["tokens"], w["text"])
        assert g["avg_logprob"] == pytest.approx(w["avg_logprob"], abs=1e-5)
        assert g["no_speech_prob"] == pytest.approx(w["no_speech_prob"], rel=1e-5, abs=1e-9)


def test_the_command_reads_a_44_khz_stereo_file(thirty_second_fork, tmp_path):
    _, checkpoint = thirty_second_fork
    write_wav(tmp_path / "stereo.wav", tones(3.0, 44100, channels=2), 44100)
    run = run_command(
        "--model", checkpoint, "--tokenizer", MULTILINGUAL, "-f", "json", "-o", tmp_path, tmp_path / "stereo.wav"
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "stereo.json").read_text())
    assert result["segments"] and result["language"]  # detected


# Bad inputs: a clear error, a non-zero exit, never a crash (README, "The whole fork")


def test_bad_checkpoints_are_refused_with_the_reason(multilingual, tmp_path):
    _, _, good = multilingual
    with pytest.raises(RuntimeError, match="cannot open"):
        rotary_attention.cpp.Whisper.load(tmp_path / "missing.pt", tokenizer=MULTILINGUAL)
    data = open(good, "rb").read()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="load_tensors"):
        rotary_attention.cpp.Whisper.load(tmp_path / "truncated.pt", tokenizer=MULTILINGUAL)
    checkpoint = torch.load(good)
    checkpoint["dims"]["n_text_state"] = checkpoint["dims"]["n_audio_state"] = 32
    torch.save(checkpoint, tmp_path / "dims.pt")
    with pytest.raises(
        RuntimeError, match=r"(?s)does not fit its dims.*size mismatch for \"(de|en)coder\.[a-z_.0-9]+\""
    ):
        rotary_attention.cpp.Whisper.load(tmp_path / "dims.pt", tokenizer=MULTILINGUAL)
    checkpoint = torch.load(good)
    del checkpoint["dims"]["n_vocab"]
    torch.save(checkpoint, tmp_path / "nodims.pt")
    with pytest.raises(RuntimeError, match="dims.n_vocab"):
        rotary_attention.cpp.Whisper.load(tmp_path / "nodims.pt", tokenizer=MULTILINGUAL)
    with pytest.raises(RuntimeError, match="does not fit the model"):
        rotary_attention.cpp.Whisper.load(good, tokenizer=GPT2)
    (tmp_path / "vocab.tiktoken").write_text("not a vocabulary\n")
    with pytest.raises(RuntimeError, match="not a .tiktoken vocabulary"):
        rotary_attention.cpp.Whisper.load(good, tokenizer=tmp_path / "vocab.tiktoken")


def test_bad_audio_is_refused_with_the_reason(tmp_path):
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(RuntimeError, match="cannot read .* as audio"):
        whisper_model.load_audio(tmp_path / "text.wav")
    write_wav(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(RuntimeError, match="holds no audio"):
        whisper_model.load_audio(tmp_path / "empty.wav")
    with pytest.raises(RuntimeError, match="cannot read"):
        whisper_model.load_audio(tmp_path / "missing.wav")


def test_the_command_reports_bad_files_on_stderr_with_a_non_zero_exit(thirty_second_fork, tmp_path):
    _, checkpoint = thirty_second_fork
    (tmp_path / "text.wav").write_text("this is not audio")
    write_wav(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    write_wav(tmp_path / "good.wav", tones(1.0, 16000), 16000)
    run = run_command("--model", checkpoint, "--tokenizer", MULTILINGUAL, "--language", "en", "-o", tmp_path / "out",
                      tmp_path / "text.wav", tmp_path / "empty.wav", tmp_path / "good.wav")  # fmt: skip
    assert run.returncode == 1
    assert "text.wav" in run.stderr and "as audio" in run.stderr and "holds no audio" in run.stderr
    # The good file was still transcribed; the bad ones left nothing.
    assert sorted(os.listdir(tmp_path / "out")) == [f"good.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")]
    for args, message in [
        (("--model", tmp_path / "missing.pt", "--tokenizer", MULTILINGUAL), "cannot open"),
        (("--model", checkpoint, "--tokenizer", GPT2), "does not fit the model"),
        (("--model", checkpoint, "--tokenizer", MULTILINGUAL, "--beam_size", "x"), "beam_size"),
    ]:
        run = run_command(*args, "-o", tmp_path / "out", tmp_path / "good.wav")
        assert run.returncode != 0 and message in run.stderr, run.stderr
        assert run.returncode < 128  # an exit, not a signal


# The decoder's few-rows product (src/whisper/few_rows_linear.cpp)


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 16, 17, 33])
@pytest.mark.parametrize("k", [17, 100, 512, 2048])
@pytest.mark.parametrize("outputs", [3, 301])
def test_few_rows_linear_is_linear_within_fp32_rounding(rows, k, outputs):
    """Within the bound of fp32 summation (k ulps of the sum of |x w| terms), against fp64;
    int8 weights against the fp64 product of their dequantized values. (Odd numbers of
    outputs: a thread's range pairs outputs half of it apart and leaves one.)"""
    g = torch.Generator().manual_seed(rows * 10_000 + k)
    x, w, b = torch.randn(rows, k, generator=g), torch.randn(outputs, k, generator=g), torch.randn(outputs, generator=g)
    q, scale = rotary_attention._C._quantize_rows_int8(w)
    for weight, dequantized, s in ((w, w, None), (q, q.double() * scale.double()[:, None], scale)):
        for bias in (b, None):
            got = rotary_attention._C._few_rows_linear(x, weight, bias, s)
            want = torch.nn.functional.linear(x.double(), dequantized.double(), None if bias is None else bias.double())
            terms = x.double().abs() @ dequantized.double().abs().T + (0 if bias is None else b.abs().double())
            bound = (k + 3) * 2.0**-24 * terms
            assert got.dtype == torch.float32 and got.shape == (rows, outputs)
            assert ((got.double() - want).abs() <= bound).all()


FEW_ROWS_SCRIPT = """
import sys, torch, rotary_attention
g = torch.Generator().manual_seed(9)
x, w, b = torch.randn(11, 300, generator=g), torch.randn(70, 300, generator=g), torch.randn(70, generator=g)
q, scale = rotary_attention._C._quantize_rows_int8(w)
outs = {"fp32": rotary_attention._C._few_rows_linear(x, w, b),
        "int8": rotary_attention._C._few_rows_linear(x, q, b, scale), "x": x, "w": w, "b": b}
torch.save(outs, sys.argv[1])
print(rotary_attention.cpu_kernel_capability())
"""


def test_every_cpu_build_of_the_few_rows_product_is_within_the_bound(tmp_path):
    """The kernels for AVX-512, AVX2 and neither, each forced in its own process
    (ROTARY_ATTENTION_CPU_CAPABILITY; a build this CPU cannot run gives the best it can)."""
    results = outputs_of_each_cpu_build(FEW_ROWS_SCRIPT, tmp_path)
    for outs in results.values():
        x, w, b = outs["x"].double(), outs["w"].double(), outs["b"].double()
        q, scale = rotary_attention._C._quantize_rows_int8(outs["w"])
        for got, weight in ((outs["fp32"], w), (outs["int8"], q.double() * scale.double()[:, None])):
            bound = 303 * 2.0**-24 * (x.abs() @ weight.abs().T + b.abs())
            assert ((got.double() - torch.nn.functional.linear(x, weight, b)).abs() <= bound).all()
    assert "DEFAULT" in results and rotary_attention.cpu_kernel_capability() in results


def test_int8_rows_are_the_nearest_multiples_of_their_scale():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 70, generator=g) * torch.logspace(-3, 2, 40)[:, None]
    w[7] = 0
    q, scale = rotary_attention._C._quantize_rows_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (40,)
    assert q.abs().amax(1)[torch.arange(40) != 7].eq(127).all() and q[7].eq(0).all()
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 * (1 + 1e-6)).all()
    with pytest.raises(RuntimeError, match="needs its fp32"):
        rotary_attention._C._few_rows_linear(torch.randn(2, 70), q)


# The C++ decoder's own caches (src/whisper/cached_text_decoder.cpp)


def original_steps(original, features, calls):
    """The original decoder's logits over whisper's kv-cache hooks, for each (tokens, source
    rows) call: source rows reorder the cache before the call, as rearrange_kv_cache does."""
    out = []
    # (The hooks go on whisper.model.MultiHeadAttention's instances: the class swapped in.)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow), original_sdpa(True), torch.no_grad():
        cache, hooks = original.install_kv_cache_hooks()
        try:
            for tokens, source in calls:
                if source is not None:
                    for module in list(cache):
                        cache[module] = cache[module][source]
                out.append(original.decoder(tokens, features, kv_cache=cache))
        finally:
            for hook in hooks:
                hook.remove()
    assert len(cache) == 4 * original.dims.n_text_layer
    return out


def decode_calls(rows, seed=0):
    """A first call of 3 tokens, single tokens with beam reorders (rows stay with their
    audio), and a call of 2 tokens over the cache (SDPA's top-left causal mask)."""
    g = torch.Generator().manual_seed(seed)
    tokens = lambda t: torch.randint(0, 51865, (rows, t), generator=g)  # noqa: E731
    half = rows // 2
    swap = [1, 0, 0] + [half + 2, half, half + 1] if rows == 6 else None
    return [(tokens(3), None), (tokens(1), None), (tokens(1), swap), (tokens(1), None), (tokens(2), swap),
            (tokens(1), None)]  # fmt: skip


@pytest.mark.parametrize("own_caches", [True, False], ids=["own caches", "TextDecoder over a KVCache"])
@pytest.mark.parametrize("rows", [2, 6], ids=["a row per audio", "a beam of 3 per audio"])
def test_the_decoder_s_caches_give_the_original_s_logits_step_by_step(rows, own_caches, multilingual):
    """Rotated keys cached once per token and per audio, a beam's audio read once, the
    few-rows product: the original's logits (recomputing every rotation) to fp32 rounding.
    The path other models take (TextDecoder::forward over a KVCache) too."""
    original, fork, path = multilingual
    features = audio_features(2)
    calls = decode_calls(rows)
    want = original_steps(original, features.repeat_interleave(rows // 2, 0), calls)
    inference = rotary_attention._C._WhisperInference(fork._model, "float32", own_caches)
    for (tokens, source), w in zip(calls, want, strict=True):
        if source is not None:
            inference.reorder(source)
        got = inference.logits(tokens, features)
        assert got.shape == w.shape
        torch.testing.assert_close(got, w, rtol=1e-5, atol=2e-4 * w.abs().max().item())
    # The steps depend on the cached tokens, and on the reorders.
    repeated = features.repeat_interleave(rows // 2, 0)
    other_start = original_steps(original, repeated, [(calls[0][0].flip(1), None), calls[1]])
    assert not torch.allclose(want[1], other_start[1], atol=1e-3)
    if rows == 6:
        unordered = original_steps(original, repeated, calls[:2] + [(calls[2][0], None)])
        assert not torch.allclose(want[2], unordered[2], atol=1e-3)


@pytest.mark.parametrize("own_caches", [True, False], ids=["own caches", "TextDecoder over a KVCache"])
def test_a_beam_s_shared_start_and_chosen_positions_give_the_original_s_logits(own_caches, multilingual):
    """The decoding loop's calls: a beam's first step, each audio's rows holding the
    same initial tokens (one row per audio runs them, its cache copied to the others),
    then single tokens with reorders; the logits of only the positions asked for; a
    position outside the new tokens refused before anything is cached."""
    original, fork, _ = multilingual
    features = audio_features(2)
    start = torch.randint(0, 51865, (2, 5), generator=torch.Generator().manual_seed(8)).repeat_interleave(3, 0)
    calls = [(start, None)] + decode_calls(6, seed=7)[1:]
    want = original_steps(original, features.repeat_interleave(3, 0), calls)
    inference = rotary_attention._C._WhisperInference(fork._model, "float32", own_caches)
    for i, ((tokens, source), w) in enumerate(zip(calls, want, strict=True)):
        if source is not None:
            inference.reorder(source)
        if i == len(calls) - 1:  # a refused call first: it caches nothing
            with pytest.raises(RuntimeError, match="logits_at: position 1 is not one of the 1 new tokens"):
                inference.logits_at(tokens, features, [1])
        positions = [1, tokens.shape[1] - 1] if i == 0 else [tokens.shape[1] - 1]
        got = inference.logits_at(tokens, features, positions)
        assert got.shape == (6, len(positions), w.shape[-1])
        torch.testing.assert_close(got, w[:, positions], rtol=1e-5, atol=2e-4 * w.abs().max().item())


def test_int8_weights_give_logits_close_to_float32_s(multilingual):
    original, fork, _ = multilingual
    features = audio_features(2)
    calls = decode_calls(6, seed=3)
    exact, int8 = (rotary_attention._C._WhisperInference(fork._model, t) for t in ("float32", "int8"))
    for tokens, source in calls:
        if source is not None:
            exact.reorder(source)
            int8.reorder(source)
        want, got = exact.logits(tokens, features), int8.logits(tokens, features)
        # (A small random model: 64 features. BENCHMARKS.md states the error at base size.)
        error = (got - want).norm() / want.norm()
        assert 0 < error < 0.05, error
    # A prompt's many rows (72) take a GEMM over the dequantized weights.
    exact.reset()
    int8.reset()
    prompt = torch.randint(0, 51865, (6, 12), generator=torch.Generator().manual_seed(5))
    want, got = exact.logits(prompt, features), int8.logits(prompt, features)
    assert 0 < (got - want).norm() / want.norm() < 0.05
    with pytest.raises(RuntimeError, match='expected "float32" or "int8", got "int4"'):
        rotary_attention._C._WhisperInference(fork._model, "int4")


# A beam's audio keys read once (KVCache::set_shared_keys_read_once)


def test_a_beam_reading_its_audio_once_attends_as_row_by_row_to_rounding():
    """Several rows over one audio's cached keys, calls of several tokens included: each
    row's queries keep their own positions."""
    torch.manual_seed(0)
    ref = reference.randomize_weights_(reference.MultiHeadAttention(64, 4), 3).eval()
    layer = rotary_attention.cpp.MultiHeadAttention(64, 4)
    layer.load_state_dict(ref.state_dict())
    layer.eval()
    xa = torch.randn(1, 40, 64)
    x = [torch.randn(5, n, 64) for n in (3, 1, 4, 2)]
    once, per_row = rotary_attention.cpp.KVCache(), rotary_attention.cpp.KVCache()
    once.shared_keys_read_once = True
    assert once.shared_keys_read_once and not per_row.shared_keys_read_once
    with torch.no_grad():
        got = [layer(step, xa, kv_cache=once)[0] for step in x]
        want = [layer(step, xa, kv_cache=per_row)[0] for step in x]
        original = [ref(step, xa.expand(5, -1, -1))[0] for step in x]
    for g, w, o in zip(got, want, original, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w, o, rtol=0, atol=0)  # row by row keeps the original's bits
