"""openai-whisper's own decoding loop (`whisper.decoding.decode`: greedy, beam
search, its logit filters) on a small random Whisper whose attention layers
are the original's or this library's: the unchanged loop (Whisper's hooks and
dict cache, rearranged for beams) and the fast path (`decode_with_kv_cache`)
give the original's tokens and log-probabilities; the same loop over the C++
decoder (`CppDecoder`) gives its tokens."""

import pytest
import torch
import whisper
import whisper.model
from whisper.decoding import DecodingOptions, DecodingTask

import rotary_attention
from conftest import original_sdpa
from rotary_attention import reference
from rotary_attention.whisper_inference import CppDecoder, decode_with_kv_cache, use_kv_cache, whisper_attention_class

# n_audio_ctx > n_text_ctx, as Whisper's hooks assume (they tell cross-attention
# by its length); an English-only vocabulary (no language detection).
DIMS = whisper.model.ModelDimensions(
    n_mels=80, n_audio_ctx=40, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
    n_vocab=51864, n_text_ctx=32, n_text_state=64, n_text_head=4, n_text_layer=2,
)  # fmt: skip


def _models(sdpa):
    torch.manual_seed(0)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow):
        original = whisper.model.Whisper(DIMS).eval()
    reference.randomize_weights_(original, 1)

    class Port(rotary_attention.MultiHeadAttention):
        def __init__(self, n_state, n_head):
            super().__init__(n_state, n_head, sdpa=sdpa)

    with whisper_attention_class(Port):
        port = whisper.model.Whisper(DIMS).eval()
    port.load_state_dict(original.state_dict())
    return original, port, Port


def _decode(model, cls, mel, options, fast=False, sdpa=True):
    with whisper_attention_class(cls), original_sdpa(sdpa):  # (the original reads a class attribute)
        if fast:
            return decode_with_kv_cache(model, mel, options)
        return whisper.decode(model, mel, options)


def _audio(n_audio, through_encoder):
    """Mel frames for the encoder, or (as Whisper accepts too) audio features for
    the decoder directly: large ones, so that a random decoder's tokens depend on
    them (each audio, and each beam, decodes other tokens)."""
    g = torch.Generator().manual_seed(2)
    if through_encoder:
        return torch.randn(n_audio, DIMS.n_mels, 2 * DIMS.n_audio_ctx, generator=g)
    return 20 * torch.randn(n_audio, DIMS.n_audio_ctx, DIMS.n_audio_state, generator=g)


OPTIONS = dict(language="en", fp16=False)
CASES = {
    "greedy, 2 audios through the encoder": (2, True, DecodingOptions(**OPTIONS)),
    "greedy, 2 audios": (2, False, DecodingOptions(**OPTIONS)),
    "greedy without timestamps": (2, False, DecodingOptions(**OPTIONS, without_timestamps=True)),
    "beam search 3": (1, False, DecodingOptions(**OPTIONS, beam_size=3)),
    "beam search 5 without timestamps": (1, False, DecodingOptions(**OPTIONS, beam_size=5, without_timestamps=True)),
    "beam search 5, patience 2": (1, False, DecodingOptions(**OPTIONS, beam_size=5, patience=2.0)),
}


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("case", list(CASES))
def test_whisper_decode_gives_the_original_tokens_and_log_probabilities(case, sdpa):
    n_audio, through_encoder, options = CASES[case]
    original, port, port_cls = _models(sdpa)
    mel = _audio(n_audio, through_encoder)
    want = _decode(original, reference.OriginalGivenOneAudioPerRow, mel, options, sdpa=sdpa)
    unchanged_loop = _decode(port, port_cls, mel, options)
    fast = _decode(port, port_cls, mel, options, fast=True)
    assert any(len(set(r.tokens)) > 2 for r in want), "the random model must decode varied tokens"
    for label, got in (("unchanged loop", unchanged_loop), ("fast path", fast)):
        assert [r.tokens for r in got] == [r.tokens for r in want], label
        assert [r.avg_logprob for r in got] == [r.avg_logprob for r in want], label
        assert [r.no_speech_prob for r in got] == [r.no_speech_prob for r in want], label


def test_the_fast_path_uses_a_kv_cache_and_no_hooks():
    _, port, port_cls = _models(True)
    options = DecodingOptions(language="en", fp16=False, beam_size=3)
    with whisper_attention_class(port_cls):
        task = use_kv_cache(DecodingTask(port, options))
        assert task.decoder.inference is task.inference
        seen = []
        task.inference.kv_cache.reorder = lambda indices, _orig=task.inference.kv_cache.reorder: (
            seen.append(list(indices)),
            _orig(indices),
        )
        task.run(_audio(1, False))
    assert not any(block.attn.key._forward_hooks for block in port.decoder.blocks)
    assert seen, "a beam search reorders the cache"
    assert len(task.inference.kv_cache) == 0  # cleaned up after the run


def test_the_cases_see_the_audio_and_the_beam():
    """The comparisons above can fail: audios decode differently, and a beam
    search finds other tokens than greedy decoding."""
    original, _, _ = _models(True)
    audio = _audio(2, False)
    greedy = _decode(original, reference.OriginalGivenOneAudioPerRow, audio, DecodingOptions(**OPTIONS))
    assert greedy[0].tokens != greedy[1].tokens
    beam = _decode(original, reference.OriginalGivenOneAudioPerRow, audio[:1], DecodingOptions(**OPTIONS, beam_size=5))
    assert beam[0].tokens != greedy[0].tokens


# The loop over the C++ decoder (CppDecoder)

needs_cpp_decoder = pytest.mark.skipif(
    not hasattr(rotary_attention._C, "_WhisperInference"), reason="built without the Whisper fork (RA_BUILD_WHISPER)"
)


def _fork(original):
    """The original's weights in whisper's model with the library's own layer class
    (a subclass may compute something else: the C++ decoder refuses it)."""
    with whisper_attention_class(rotary_attention.MultiHeadAttention):
        fork = whisper.model.Whisper(DIMS).eval()
    fork.load_state_dict(original.state_dict())
    return fork


@needs_cpp_decoder
@pytest.mark.parametrize("case", list(CASES))
def test_whisper_s_loop_over_the_cpp_decoder_gives_the_original_tokens(case):
    """The C++ decoder sums in another order (fp32 rounding): the tokens are the
    original's, the log-probabilities equal to rounding."""
    n_audio, through_encoder, options = CASES[case]
    original, _, _ = _models(True)
    fork = _fork(original)
    mel = _audio(n_audio, through_encoder)
    want = _decode(original, reference.OriginalGivenOneAudioPerRow, mel, options)
    with whisper_attention_class(rotary_attention.MultiHeadAttention):
        got = CppDecoder(fork).decode(mel, options)
        int8 = CppDecoder(fork, compute_type="int8").decode(mel, options)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.avg_logprob == pytest.approx(w.avg_logprob, abs=1e-5)
        assert g.no_speech_prob == pytest.approx(w.no_speech_prob, rel=1e-5, abs=1e-9)
    assert len(int8) == len(want) and all(r.tokens for r in int8)


@needs_cpp_decoder
def test_the_cpp_decoder_refuses_a_decoder_it_would_not_compute():
    """A hook, a replaced child, or other attention options: the C++ decoder would
    silently compute something else, so it says why instead."""
    original, subclassed, _ = _models(True)
    with pytest.raises(ValueError, match=r"decoder.blocks.0.attn is a Port"):
        CppDecoder(subclassed)
    port = _fork(original)
    with pytest.raises(ValueError, match=r"decoder.blocks.0.attn.value has hooks"):
        handle = port.decoder.blocks[0].attn.value.register_forward_hook(lambda *a: None)
        try:
            CppDecoder(port)
        finally:
            handle.remove()
    port.decoder.blocks[1].mlp[1] = torch.nn.ReLU()  # no weights: the state dict alone would not show it
    with pytest.raises(ValueError, match=r"decoder.blocks.1.mlp.1 is a ReLU"):
        CppDecoder(port)
    port.decoder.blocks[1].mlp[1] = torch.nn.GELU()
    port.decoder.blocks[0].cross_attn.sdpa = False
    with pytest.raises(ValueError, match="blocks.0.cross_attn is not a default MultiHeadAttention"):
        CppDecoder(port)
    port.decoder.blocks[0].cross_attn.sdpa = True
    with pytest.raises(RuntimeError, match='expected "float32" or "int8"'):
        CppDecoder(port, compute_type="fp8")
