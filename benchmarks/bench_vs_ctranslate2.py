"""The fork's decoders against CTranslate2 (the engine inside faster-whisper), on a
Whisper-base-sized model: 512 state, 8 heads, 6 encoder and 6 decoder layers, 1500
audio frames, an English-only vocabulary (51864 tokens).

    python benchmarks/bench_vs_ctranslate2.py [--reps 3] [--tokens 100] [--skip-original]

Contenders, each in a process of its own (CTranslate2's OpenMP runtime and torch's
spin against each other in one), in interleaved rounds (the order rotates); medians:

- CTranslate2 float32 and int8 (`compute_type="int8"`: int8 weights, dynamically
  quantised activations), on a random `transformers` Whisper of the same dims
  converted with CTranslate2's own converter (its Whisper loader takes a
  tokenizer-like object for the vocabulary only);
- the original layers through `whisper.decoding` (openai-whisper's loop);
- this library's Python fast path (`decode_with_kv_cache`: whisper.decoding's loop
  over a KVCache, the model's nn.Modules);
- whisper.decoding's loop over this library's C++ decoder (`CppDecoder`, from the
  same Python model);
- this library's C++ decoder (`rotary_attention.cpp.Whisper`), with fp32 weights
  and with int8 ones (`compute_type="int8"`: per-row int8 weights, fp32
  activations).

Every decoder gets the same audio features (the encoder's output is given), the
start sequence [sot, notimestamps] and decodes --tokens tokens with the end of text
suppressed: the decoded lengths are checked. Greedy and beam 5 are timed, and the
encoder alone (30 s of mel frames). The step's memory floor is printed beside: the
bytes one step must read (decoder weights, the shared cross-attention keys and
values, the self-attention keys and values, the embedding for the logits) over the
read bandwidth measured here (a sum over 512 MiB). ctranslate2 (pinned below) is
installed into this interpreter when missing.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CTRANSLATE2 = "ctranslate2==4.8.5"
DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
            n_vocab=51864, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6)  # fmt: skip
EOT, SOT, NO_TIMESTAMPS = 50256, 50257, 50362  # the English-only vocabulary's


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def ensure_ctranslate2():
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", CTRANSLATE2])


# ---------------------------------------------------------------- set-up (parent)


class VocabularyOnly:
    """What CTranslate2's Whisper loader reads of a tokenizer: the vocabulary."""

    def __init__(self, n_vocab):
        import whisper.tokenizer

        specials = ["<|endoftext|>", "<|startoftranscript|>"]
        specials += [f"<|{code}|>" for code in list(whisper.tokenizer.LANGUAGES)[:99]]
        specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                     "<|notimestamps|>"]  # fmt: skip
        tokens = [f"t{i}" for i in range(EOT)] + specials
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.additional_special_tokens = specials[2:101]

    def get_vocab(self):
        return self.vocab

    def convert_tokens_to_ids(self, token):
        return self.vocab[token]


def prepare(folder):
    """The fork's checkpoint, the CTranslate2 model and the inputs, in `folder`."""
    import numpy as np
    import torch
    import transformers
    import whisper.model
    from ctranslate2.converters.transformers import WhisperLoader

    from rotary_attention import reference
    from rotary_attention.whisper_inference import whisper_attention_class

    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(**DIMS)
    with whisper_attention_class(reference.OriginalGivenOneAudioPerRow):
        original = whisper.model.Whisper(dims).eval()
    reference.randomize_weights_(original, 1)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": original.state_dict()},
               os.path.join(folder, "fork.pt"))  # fmt: skip

    config = transformers.WhisperConfig(
        vocab_size=DIMS["n_vocab"], num_mel_bins=80, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        max_source_positions=1500, max_target_positions=448,
    )  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    spec = WhisperLoader()(hf, VocabularyOnly(DIMS["n_vocab"]))  # converted in memory
    spec.validate()
    spec.optimize(quantization=None)
    os.makedirs(os.path.join(folder, "ct2"))
    spec.save(os.path.join(folder, "ct2"))

    g = torch.Generator().manual_seed(2)
    np.save(os.path.join(folder, "features.npy"), torch.randn(1, 1500, 512, generator=g).numpy())
    np.save(os.path.join(folder, "mel.npy"), torch.randn(1, 80, 3000, generator=g).numpy())


# ---------------------------------------------------------------- contenders (children)


def whisper_options(beam, tokens):
    from whisper.decoding import DecodingOptions

    return DecodingOptions(
        language="en", fp16=False, beam_size=beam or None, sample_len=tokens, without_timestamps=True,
        suppress_tokens=[-1, EOT], suppress_blank=False,
    )  # fmt: skip


def contender(name, folder, task, beam, tokens):
    """(run, decoded length): one timed call of `name`, its model loaded."""
    import numpy as np

    features = np.load(os.path.join(folder, "features.npy"))
    mel = np.load(os.path.join(folder, "mel.npy"))
    if name.startswith("ctranslate2"):
        import ctranslate2

        model = ctranslate2.models.Whisper(os.path.join(folder, "ct2"), device="cpu", intra_threads=2,
                                           compute_type="int8" if name.endswith("int8") else "float32")  # fmt: skip
        if task == "encoder":
            return lambda: model.encode(ctranslate2.StorageView.from_array(mel)), lambda out: None
        encoded = ctranslate2.StorageView.from_array(features)

        def run():
            # CTranslate2 decodes at most max_length // 2 tokens (Whisper's sample_len rule).
            return model.generate(encoded, [[SOT, NO_TIMESTAMPS]], beam_size=beam or 1, max_length=2 * tokens,
                                  suppress_tokens=[EOT], suppress_blank=False)  # fmt: skip

        return run, lambda out: len(out[0].sequences_ids[0])
    import torch
    import whisper

    import rotary_attention.cpp
    from rotary_attention import reference
    from rotary_attention.whisper_inference import CppDecoder, decode_with_kv_cache, whisper_attention_class

    torch.set_num_threads(2)
    checkpoint = os.path.join(folder, "fork.pt")
    features_t, mel_t = torch.from_numpy(features), torch.from_numpy(mel)
    options = whisper_options(beam, tokens)
    if name.startswith("C++ decoder"):
        vocabulary = os.path.join(os.path.dirname(whisper.__file__), "assets", "gpt2.tiktoken")
        compute_type = "int8" if name.endswith("int8") else "float32"
        model = rotary_attention.cpp.Whisper.load(checkpoint, tokenizer=vocabulary, compute_type=compute_type)
        if task == "encoder":
            return lambda: model.embed_audio(mel_t), lambda out: None
        return lambda: model.decode(features_t, options), lambda out: len(out[0].tokens)
    cls = reference.OriginalGivenOneAudioPerRow if name == "original" else rotary_attention.MultiHeadAttention
    with whisper_attention_class(cls):
        model = whisper.model.Whisper(whisper.model.ModelDimensions(**DIMS)).eval()
    model.load_state_dict(torch.load(checkpoint)["model_state_dict"])
    if name == "Python + C++ decoder":
        decoder = CppDecoder(model)
        return lambda: decoder.decode(features_t, options), lambda out: len(out[0].tokens)

    def run():
        with whisper_attention_class(cls), torch.no_grad():
            if task == "encoder":
                return model.encoder(mel_t)
            if name == "original":
                return whisper.decode(model, features_t, options)
            return decode_with_kv_cache(model, features_t, options)

    return run, lambda out: None if task == "encoder" else len(out[0].tokens)


def int8_accuracy(engine, folder, tokens):
    """int8 against float32 for one engine, teacher-forced along its own float32 greedy
    decode: at each step both see the same prefix; returns how often their likeliest
    tokens agree and how far int8's log-probabilities lie from float32's."""
    import numpy as np
    import torch

    features = np.load(os.path.join(folder, "features.npy"))
    prefix = [SOT, NO_TIMESTAMPS]
    steps = []  # (float32 log-probs, int8 log-probs) per step
    if engine == "ctranslate2":
        import ctranslate2

        encoded = ctranslate2.StorageView.from_array(features)
        models = [ctranslate2.models.Whisper(os.path.join(folder, "ct2"), device="cpu", intra_threads=2,
                                             compute_type=t) for t in ("float32", "int8")]  # fmt: skip

        def next_logprobs(model, sequence):
            out = model.generate(encoded, [sequence], beam_size=1, max_length=len(sequence) + 2,
                                 return_logits_vocab=True, suppress_tokens=[], suppress_blank=False)  # fmt: skip
            return torch.from_numpy(np.asarray(out[0].logits[0][0]))

        sequence = list(prefix)
        for _ in range(tokens):
            pair = [next_logprobs(m, sequence).log_softmax(-1) for m in models]
            steps.append(pair)
            sequence.append(int(pair[0].argmax()))
    else:
        import whisper

        import rotary_attention.cpp

        torch.set_num_threads(2)
        vocabulary = os.path.join(os.path.dirname(whisper.__file__), "assets", "gpt2.tiktoken")
        checkpoint = os.path.join(folder, "fork.pt")
        models = [rotary_attention.cpp.Whisper.load(checkpoint, tokenizer=vocabulary, compute_type=t)._inference
                  for t in ("float32", "int8")]  # fmt: skip
        features_t = torch.from_numpy(features)
        step = torch.tensor([prefix])
        for _ in range(tokens):
            pair = [m.logits(step, features_t)[0, -1].log_softmax(-1) for m in models]
            steps.append(pair)
            step = pair[0].argmax().view(1, 1)
    agree = sum(int(a.argmax() == b.argmax()) for a, b in steps) / len(steps)
    # The likeliest token's log-probability, int8 against float32.
    gaps = [abs(float(b[a.argmax()] - a.max())) for a, b in steps]
    relative = [float((b - a).norm() / (a - a.mean()).norm()) for a, b in steps]
    return {"top-1 agreement": agree, "median |dlogp| of the top token": statistics.median(gaps),
            "median relative error of the log-probs": statistics.median(relative)}  # fmt: skip


def child(args):
    if args.accuracy:
        print(json.dumps(int8_accuracy(args.accuracy, args.folder, args.tokens)))
        return
    run, length = contender(args.contender, args.folder, args.task, args.beam, args.tokens)
    run()  # warm-up: allocations, caches, first-call set-up
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "length": length(out)}))


# ---------------------------------------------------------------- rounds (parent)


def read_bandwidth():
    import torch

    torch.set_num_threads(2)
    data = torch.ones(128 * 1024 * 1024)  # 512 MiB
    data.sum()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        samples.append(time.perf_counter() - start)
    return data.numel() * 4 / statistics.median(samples)


def step_bytes(rows, step):
    """What one decode step reads (fp32): the decoder's weights, the audio's keys and
    values (once for a beam sharing them), the self-attention cache, the embedding."""
    n, layers, vocab, frames = DIMS["n_text_state"], DIMS["n_text_layer"], DIMS["n_vocab"], DIMS["n_audio_ctx"]
    per_layer = 4 * n * n + 2 * n * n + 2 * 4 * n * n + 6 * n  # self q,k,v,out; cross q,out; mlp; norms
    cross = layers * 2 * frames * n
    self_cache = layers * 2 * rows * step * n
    return 4 * (layers * per_layer + cross + self_cache + vocab * n)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--skip-original", action="store_true", help="leave out the original (48 s a run)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help="run only these tasks: beam, greedy, encoder, accuracy")
    args = parser.parse_args()
    if args.worker:
        return child(args)

    ensure_ctranslate2()
    decoders = ["ctranslate2 float32", "ctranslate2 int8", "C++ decoder", "C++ decoder int8", "Python fast path",
                "Python + C++ decoder"]  # fmt: skip
    if not args.skip_original:
        decoders.append("original")
    tasks = [("beam 5", "decode", 5), ("greedy", "decode", 0), ("encoder", "encoder", 0)]
    if args.only:
        tasks = [t for t in tasks if t[0].split()[0] in args.only]
    accuracy = not args.only or "accuracy" in args.only
    with tempfile.TemporaryDirectory() as folder:
        prepare(folder)
        bandwidth = read_bandwidth()
        print(f"# {cpu_name()}, {os.cpu_count()} cores, 2 threads each; load average {os.getloadavg()[0]:.2f}")
        print(f"# Whisper-base-sized: 512 state, 8 heads, 6 + 6 layers, 1500 frames; {args.tokens} tokens; "
              f"medians of {args.reps} interleaved rounds, one process per run")  # fmt: skip
        print(f"# read bandwidth (sum over 512 MiB, 2 threads): {bandwidth / 1e9:.1f} GB/s")
        for label, task, beam in tasks:
            names = decoders if task == "decode" else ["ctranslate2 float32", "ctranslate2 int8", "C++ decoder",
                                                       "Python fast path"]  # fmt: skip
            samples = {n: [] for n in names}
            lengths = {}
            for rep in range(args.reps):
                for k in range(len(names)):
                    name = names[(rep + k) % len(names)]
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--contender", name, "--folder",
                           folder, "--task", task, "--beam", str(beam), "--tokens", str(args.tokens)]  # fmt: skip
                    run = subprocess.run(cmd, capture_output=True, text=True)
                    if run.returncode != 0:
                        sys.exit(f"{name} ({label}) failed:\n{run.stderr}")
                    out = json.loads(run.stdout)
                    samples[name].append(out["seconds"])
                    lengths[name] = out["length"]
            if task == "decode":
                rows = beam or 1
                step = step_bytes(rows, args.tokens // 2 + 2)
                floor = step / bandwidth
                print(f"\n## {label}: decoded lengths {lengths}")
                print(f"# step floor: {step / 1e6:.0f} MB per step (mid-sequence) "
                      f"/ {bandwidth / 1e9:.1f} GB/s = {1e3 * floor:.1f} ms")  # fmt: skip
                if len(set(lengths.values())) != 1:
                    sys.exit(f"the contenders decoded different lengths: {lengths}")
            else:
                print(f"\n## {label} (30 s of mel frames)")
            base = statistics.median(samples["ctranslate2 float32"])
            base_int8 = statistics.median(samples["ctranslate2 int8"])
            for name in names:
                t = statistics.median(samples[name])
                per_step = f"{1e3 * t / args.tokens:7.2f} ms/step" if task == "decode" else ""
                int8 = f"  {base_int8 / t:5.2f}x CTranslate2 int8's" if name.endswith("int8") else ""
                print(f"{name:22s} {t:8.3f} s {per_step}  {base / t:5.2f}x CTranslate2 float32's speed{int8}")
        if accuracy:
            print(f"\n## int8 against float32, teacher-forced along each engine's float32 greedy decode "
                  f"({args.tokens} steps; the two engines run different random models)")  # fmt: skip
            for engine in ("ctranslate2", "C++ decoder"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--accuracy", engine, "--folder", folder,
                       "--tokens", str(args.tokens)]  # fmt: skip
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    sys.exit(f"{engine} (accuracy) failed:\n{run.stderr}")
                metrics = json.loads(run.stdout)
                print(f"{engine:22s} " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
