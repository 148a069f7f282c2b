"""Long-form transcription on real weights and real speech: this library's C++
`transcribe` against openai-whisper's `whisper.transcribe` and faster-whisper's
`WhisperModel.transcribe`, over the same weights (Whisper base, OpenAI's, from
scripts/real_data.py: openai-whisper's checkpoint and the CTranslate2 folder it
was converted from) and the same recording (`long.wav`: 2 min 3 s of JFK's address
and LibriVox clips with silences).

    python benchmarks/bench_transcribe.py [--rounds 3] [--model base] [--audio long]
        [--no-fallback] [--word_timestamps] [--vad_filter] [--contenders ...]

Whisper's command-line defaults for every contender: English, beam 5, best_of 5,
the temperature fallback (0, 0.2, ..., 1.0) with its thresholds, the previous text
as the prompt. Each contender runs in a process of its own (faster-whisper's process
never imports torch: CTranslate2's OpenMP runtime and torch's spin against each
other in one), loads its model, transcribes a short clip untimed, then the
recording once, timed; the rounds are interleaved (the order rotates) and the
medians reported: seconds, the real-time factor (seconds per second of audio) and
the words out, and each round's decoding passes (each window's temperatures up to
the one kept: the fallback's work, which differs between rounds where sampling
does). Contenders: openai-whisper (fp32), faster-whisper float32 and int8
(`cpu_threads` = the cores), this library's C++ transcribe float32 and int8
(`compute_type="int8"`: int8 weights, fp32 activations). faster-whisper (pinned
below) is installed into this interpreter when missing. `--word_timestamps` turns
on each engine's word timestamps (openai-whisper with openai's alignment heads for
the model), `--vad_filter` faster-whisper's and this library's voice-activity filter
(Silero VAD with faster-whisper's defaults; openai-whisper has none and is left out),
`--batch_size 8` faster-whisper's BatchedInferencePipeline and this library's batched
transcription (both without timestamps, faster-whisper's pipeline default).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import wave

FASTER_WHISPER = ["faster-whisper==1.2.1", "ctranslate2==4.8.5"]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OPTIONS = dict(language="en", beam_size=5, best_of=5, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
CONTENDERS = ["openai-whisper", "faster-whisper float32", "faster-whisper int8", "C++ float32", "C++ int8"]


def real_data():
    spec = importlib.util.spec_from_file_location("real_data", os.path.join(ROOT, "scripts", "real_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_wav(path):
    import numpy as np

    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


# ---------------------------------------------------------------- one contender (child)


def run_contender(name, checkpoint, ct2_folder, warmup_path, audio_path, fallback, modes):
    import time

    if fallback == "no":
        OPTIONS["temperature"] = (0.0,)
    if "words" in modes:
        OPTIONS["word_timestamps"] = True
    if "vad" in modes:
        OPTIONS["vad_filter"] = True
    batch = [int(m[len("batch") :]) for m in modes.split(",") if m.startswith("batch")]
    if batch:  # faster-whisper's batched pipeline: its defaults, no timestamps
        OPTIONS.update(batch_size=batch[0], without_timestamps=True)
    warmup, audio = read_wav(warmup_path), read_wav(audio_path)
    if name.startswith("faster-whisper"):
        from faster_whisper import WhisperModel

        assert "torch" not in sys.modules, "faster-whisper's process must not import torch"
        model = WhisperModel(ct2_folder, device="cpu", compute_type=name.split()[1], cpu_threads=os.cpu_count())

        if batch:
            from faster_whisper import BatchedInferencePipeline

            pipeline = BatchedInferencePipeline(model)

        def transcribe(samples):
            if batch:
                segments, _ = pipeline.transcribe(samples, **OPTIONS)
                segments = list(segments)  # a generator: this runs it
                return "".join(s.text for s in segments), [(s.seek, s.temperature) for s in segments]
            segments, _ = model.transcribe(samples, **OPTIONS, condition_on_previous_text=True)
            segments = list(segments)  # a generator: this runs it
            return "".join(s.text for s in segments), [(s.seek, s.temperature) for s in segments]

    elif name == "openai-whisper":
        import whisper

        model = whisper.load_model(checkpoint)
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS[os.path.basename(checkpoint)[: -len(".pt")]])

        def transcribe(samples):
            result = whisper.transcribe(model, samples, fp16=False, **OPTIONS)
            return result["text"], [(s["seek"], s["temperature"]) for s in result["segments"]]

    else:
        import rotary_attention.cpp

        model = rotary_attention.cpp.Whisper.load(checkpoint, compute_type=name.split()[1])

        def transcribe(samples):
            result = model.transcribe(samples, **OPTIONS)
            return result["text"], [(s["seek"], s["temperature"]) for s in result["segments"]]

    transcribe(warmup)
    start = time.perf_counter()
    text, windows = transcribe(audio)
    seconds = time.perf_counter() - start
    # Decoding passes: each window's temperatures up to the one kept.
    passes = sum(OPTIONS["temperature"].index(t) + 1 for t in dict(windows).values())
    print(json.dumps({"name": name, "seconds": seconds, "text": text, "passes": passes}))


# ---------------------------------------------------------------- the race (parent)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="base", choices=["base", "tiny.en"])
    parser.add_argument("--audio", default="long")
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="temperature 0 only: every engine decodes each window once (no sampling, no randomness)",
    )
    parser.add_argument("--word_timestamps", action="store_true", help="every engine's word timestamps on")
    parser.add_argument("--vad_filter", action="store_true", help="Silero VAD first (openai-whisper left out)")
    parser.add_argument(
        "--batch_size", type=int, help="faster-whisper's batched pipeline and this one's (openai-whisper left out)"
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_contender(*args.child)
        return
    from bench_vs_ctranslate2 import cpu_name  # (imports no torch)

    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *FASTER_WHISPER])
    data = real_data()
    checkpoint = data.whisper_model(args.model)
    ct2_folder = data.DATA / f"ct2-{args.model}"
    speech = data.speech()
    duration = len(read_wav(speech[args.audio])) / 16000
    modes = ",".join(
        ["modes", *(["words"] if args.word_timestamps else []), *(["vad"] if args.vad_filter else []),
         *([f"batch{args.batch_size}"] if args.batch_size else [])]
    )  # fmt: skip
    print(f"{cpu_name()}, {os.cpu_count()} cores; Whisper {args.model}; {args.audio}.wav, {duration:.1f} s; "
          f"{args.rounds} rounds, order rotating; " + ("temperature 0 only" if args.no_fallback else
          "temperature fallback (whisper's defaults)") + ("; word timestamps" if args.word_timestamps else "")
          + ("; VAD filter" if args.vad_filter else "")
          + (f"; batched, batch_size {args.batch_size}, no timestamps" if args.batch_size else ""))  # fmt: skip
    no_openai = args.vad_filter or args.batch_size
    contenders = [c for c in args.contenders if not (no_openai and c == "openai-whisper")]
    results = {name: [] for name in contenders}
    passes = {name: [] for name in contenders}
    texts = {}
    for r in range(args.rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for name in order:
            child = [str(checkpoint), str(ct2_folder), str(speech["jfk"]), str(speech[args.audio])]
            child += ["no" if args.no_fallback else "yes", modes]
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, *child], capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(result["seconds"])
            passes[name].append(result["passes"])
            texts[name] = result["text"]
            print(f"  round {r + 1}: {name:24s} {result['seconds']:7.2f} s, {result['passes']} passes", flush=True)
    reference = texts.get("openai-whisper", "")
    fastest_faster_whisper = {
        t: statistics.median(results[f"faster-whisper {t}"]) for t in ("float32", "int8")
        if f"faster-whisper {t}" in results
    }  # fmt: skip
    # Seconds per decoding pass: what an engine controls where sampling decides
    # how many passes the fallback takes.
    per_pass = {
        name: statistics.median(t / p for t, p in zip(results[name], passes[name], strict=True)) for name in contenders
    }
    print(
        f"\n{'contender':24s} {'median s':>9s} {'RTF':>7s} {'words':>6s} {'passes':>9s} {'s/pass':>7s}  "
        f"{'same text as openai-whisper':>27s}  vs faster-whisper (s, s/pass)"
    )
    for name in contenders:
        seconds = statistics.median(results[name])
        words = len(texts[name].split())
        same = "yes" if texts[name].strip() == reference.strip() else "no"
        compute = name.split()[-1]
        rival = f"faster-whisper {compute}"
        ratio_text = ""
        if name.startswith("C++") and rival in results:
            ratio_text = f"{fastest_faster_whisper[compute] / seconds:.2f}x, {per_pass[rival] / per_pass[name]:.2f}x"
        each = "/".join(map(str, passes[name]))
        print(
            f"{name:24s} {seconds:9.2f} {seconds / duration:7.3f} {words:6d} {each:>9s} {per_pass[name]:7.2f}  "
            f"{same:>27s}  {ratio_text}"
        )
    for name in contenders:
        if texts[name].strip() != reference.strip():
            print(f"\n{name}'s text:\n{texts[name].strip()}")
    print(f"\nopenai-whisper's text:\n{reference.strip()}")


if __name__ == "__main__":
    main()
