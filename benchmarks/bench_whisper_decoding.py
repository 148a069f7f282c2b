"""openai-whisper's own decoding loop, beam search, on a Whisper-base-sized decoder
(n_text_state 512, 8 heads, 6 layers, 1500 audio frames) whose attention layers are:

1. the original (given one copy of the audio features per beam: its `view` cannot
   broadcast one audio over a beam), through Whisper's unchanged loop (its hooks fill a
   dict cache; cross-attention keys are recomputed at every step, as Whisper's hooks do);
2. this library's nn.Module through the same unchanged loop (the hooks send it down the
   faithful road: children called as modules, the rest in `attention_core`);
3. this library through the fast path (`decode_with_kv_cache`: a KVCache, no hooks,
   one operator call per layer, xa's keys computed once, the cache reordered per beam);
4. the C++ fork (`rotary_attention.cpp.Whisper`, loaded from the same weights saved as
   openai-whisper saves a checkpoint): the C++ decoding loop, no Python per step.

    python benchmarks/bench_whisper_decoding.py [--reps 3] [--tokens 100] [--beam 5] [--layers 6]

Random weights; the end-of-text token is suppressed so that every run decodes exactly
--tokens tokens. The encoder is not timed (the audio features are passed in). Contenders
take turns in each repetition (rotating order); medians; the tokens must agree.
"""

import argparse
import dataclasses
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whisper  # noqa: E402
import whisper.model  # noqa: E402
from whisper.decoding import DecodingOptions  # noqa: E402

import rotary_attention  # noqa: E402
from common import machine_line, median_seconds_interleaved  # noqa: E402
from rotary_attention import reference  # noqa: E402
from rotary_attention.whisper_inference import decode_with_kv_cache, whisper_attention_class  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    dims = whisper.model.ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=args.layers,
    )  # fmt: skip
    torch.manual_seed(0)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow):
        original = whisper.model.Whisper(dims).eval()
    reference.randomize_weights_(original, 1)
    with whisper_attention_class(rotary_attention.MultiHeadAttention):
        port = whisper.model.Whisper(dims).eval()
    port.load_state_dict(original.state_dict())
    features = torch.randn(1, dims.n_audio_ctx, dims.n_audio_state)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "fork.pt")
        torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": original.state_dict()}, checkpoint)
        vocabulary = os.path.join(os.path.dirname(whisper.__file__), "assets", "gpt2.tiktoken")
        cpp_fork = rotary_attention.cpp.Whisper.load(checkpoint, tokenizer=vocabulary)
    eot = 50256  # the English-only vocabulary's end of text
    options = DecodingOptions(
        language="en", fp16=False, beam_size=args.beam, sample_len=args.tokens,
        without_timestamps=True, suppress_tokens=[-1, eot],
    )  # fmt: skip

    results = {}

    def run(label, cls, model, fast):
        def go():
            with whisper_attention_class(cls):
                decode = decode_with_kv_cache if fast else whisper.decode
                results[label] = decode(model, features, options)

        return go

    def run_cpp():
        results["cpp"] = cpp_fork.decode(features, options)

    contenders = {
        "original, Whisper's loop": run("original", reference.OriginalGivenOneAudioPerRow, original, False),
        "library, Whisper's loop (faithful road)": run("unchanged", rotary_attention.MultiHeadAttention, port, False),
        "library, fast path (KVCache)": run("fast", rotary_attention.MultiHeadAttention, port, True),
        "C++ fork (rotary_attention.cpp.Whisper)": run_cpp,
    }
    times = median_seconds_interleaved(list(contenders.values()), reps=args.reps)
    tokens = {label: [r.tokens for r in res] for label, res in results.items()}
    print(f"# {machine_line()}")
    print(f"# decoder 512 x {args.layers} layers, beam {args.beam}, {args.tokens} tokens, medians of {args.reps}")
    agree = all(tokens[label] == tokens["original"] for label in ("unchanged", "fast", "cpp"))
    print(f"# tokens agree with the original: {agree}; decoded lengths {[len(t) for t in tokens['original']]}")
    base = times[0]
    for (label, _), t in zip(contenders.items(), times, strict=True):
        print(f"{label:42s} {t:8.3f} s   {base / t:5.2f}x the original")
    if not agree:
        sys.exit("the contenders decoded different tokens")


if __name__ == "__main__":
    main()
