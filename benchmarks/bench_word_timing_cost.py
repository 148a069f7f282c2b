"""What word timestamps cost in this library's C++ `transcribe`: Whisper base
(scripts/real_data.py --base) transcribes `long.wav` with word_timestamps=True
(beam 5, temperature 0, openai's alignment heads for base), then each window's
alignment pass (`find_alignment`: one decoder pass without SDPA over the window's
text, the cross-attention weights of the alignment heads, DTW) runs again alone
over the same audio features, timed. Prints the transcription's median seconds,
the passes' median seconds and their share.

    python benchmarks/bench_word_timing_cost.py [--rounds 3]
"""

import argparse
import statistics
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from bench_transcribe import read_wav, real_data
    from bench_vs_ctranslate2 import cpu_name

    import rotary_attention.cpp

    data = real_data()
    checkpoint = data.whisper_model("base")
    samples = read_wav(data.speech()["long"])
    model = rotary_attention.cpp.Whisper.load(checkpoint)
    model.alignment_heads = "base"
    options = dict(language="en", beam_size=5, best_of=5, temperature=0.0, word_timestamps=True)
    model.transcribe(samples[: 16000 * 5], **options)  # warm-up, not timed
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = model.transcribe(samples, **options)
        seconds.append(time.perf_counter() - start)
    transcription = statistics.median(seconds)

    # Each window's text tokens (whisper passes the window's segments' tokens below
    # end-of-text) and its features, as transcribe computed them.
    mel = model.log_mel_spectrogram(torch.from_numpy(samples), padding=480000)
    content_frames = mel.shape[1] - 3000
    windows = {}
    for segment in result["segments"]:
        windows.setdefault(segment["seek"], []).extend(t for t in segment["tokens"] if t < model.tokenizer.eot)
    inputs = [
        (model.embed_audio(mel[:, seek : seek + 3000].unsqueeze(0)), tokens, min(3000, content_frames - seek))
        for seek, tokens in windows.items()
    ]
    passes = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for features, tokens, frames in inputs:
            model._model.find_alignment(model.tokenizer, "en", tokens, features, frames, 7)
        passes.append(time.perf_counter() - start)
    alignment = statistics.median(passes)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; Whisper base, long.wav, {len(windows)} windows")
    print(f"transcription with word timestamps: {transcription:.2f} s (median of {args.rounds})")
    print(f"its alignment passes run alone:     {alignment:.2f} s = {100 * alignment / transcription:.1f}%")


if __name__ == "__main__":
    main()
