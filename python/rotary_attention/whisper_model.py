"""The Whisper fork in C++, from Python: `Whisper.load(checkpoint, tokenizer=path)`
reads a checkpoint as openai-whisper saves it (a fork's, or one of Whisper's
own), `transcribe` runs `whisper.transcribe` over audio of any length and
`decode` one window (openai-whisper's `DecodingTask`), in C++ with no Python
per step or window. Options are whisper's keyword names (or a
`whisper.decoding.DecodingOptions`); results carry whisper's fields.
openai-whisper is not needed."""

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch

from . import _C
from .voice_activity import load_silero_vad

# whisper.decoding.DecodingOptions' fields and defaults: the C++ struct's
# (its `fields()`), with whisper's spellings of two of them, and fp16.
_DEFAULTS = (
    {**_C._decoding_defaults(), "prompt": None, "prefix": None, "suppress_tokens": "-1", "fp16": True}
    if hasattr(_C, "_decoding_defaults")
    else {}
)
# whisper.transcribe's own keywords (besides the decoding options).
_TRANSCRIBE_DEFAULTS = (
    {**_C._transcribe_defaults(), "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "clip_timestamps": "0"}
    if hasattr(_C, "_transcribe_defaults")
    else {}
)


@dataclass(frozen=True)
class DecodingResult:
    """`whisper.decoding.DecodingResult`'s fields."""

    audio_features: torch.Tensor
    language: str
    language_probs: dict | None = None
    tokens: list = field(default_factory=list)
    text: str = ""
    avg_logprob: float = math.nan
    no_speech_prob: float = math.nan
    temperature: float = math.nan
    compression_ratio: float = math.nan


def _options(options, kwargs) -> dict:
    if options is None:
        values = dict(_DEFAULTS)
    elif dataclasses.is_dataclass(options):
        values = {**_DEFAULTS, **{f.name: getattr(options, f.name) for f in dataclasses.fields(options)}}
    else:
        raise TypeError(f"options must be a whisper.decoding.DecodingOptions or None, not {type(options).__name__}")
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"decode() got unexpected options: {sorted(unknown)}")
    values.update(kwargs)
    suppress = values["suppress_tokens"]
    if isinstance(suppress, str):
        suppress = [int(t) for t in suppress.split(",")] if suppress else []
    values["suppress_tokens"] = list(suppress) if suppress is not None else []
    values["prompt"] = values["prompt"] or []
    values["prefix"] = values["prefix"] or []
    return values


def _token_list(tokenizer, text_or_tokens) -> list:
    """A prompt or prefix: text is encoded as whisper's DecodingTask encodes it."""
    if isinstance(text_or_tokens, str):
        return tokenizer.encode(" " + text_or_tokens.strip())
    return list(text_or_tokens)


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """whisper.utils.format_timestamp."""
    assert seconds >= 0, "non-negative timestamp expected"
    milliseconds = round(seconds * 1000.0)
    hours = milliseconds // 3_600_000
    milliseconds -= hours * 3_600_000
    minutes = milliseconds // 60_000
    milliseconds -= minutes * 60_000
    seconds = milliseconds // 1_000
    milliseconds -= seconds * 1_000
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{seconds:02d}{decimal_marker}{milliseconds:03d}"


class Whisper:
    """A Whisper fork (openai-whisper's model with this library's attention
    layers) in C++. On the CPU it computes in fp32 (`fp16` is ignored, as
    `whisper.transcribe` does on a CPU)."""

    def __init__(self, model, tokenizer, compute_type: str = "float32"):
        self._model = model
        self.tokenizer = tokenizer
        self.dims = model.dims
        self.compute_type = compute_type
        self._inference = _C._WhisperInference(model, compute_type)

    @classmethod
    def load(cls, checkpoint, tokenizer=None, compute_type: str = "float32"):
        """checkpoint: a file saved as openai-whisper saves it
        (`{"dims": ..., "model_state_dict": ...}`, fp16 or fp32): a fork's, or one
        of Whisper's own (its plain attention is found from the keys); tokenizer:
        the `.tiktoken` vocabulary that fits it (gpt2 for English-only models,
        multilingual otherwise), by default the one beside the checkpoint or in
        the installed openai-whisper. compute_type: the weights a decode step
        reads, "float32" or "int8" (quantized once here, per output row)."""
        if not hasattr(_C, "_WhisperModel"):
            raise RuntimeError(
                "rotary_attention was built without the Whisper fork: libsndfile, libsoxr, PCRE2, zlib or CLI11 "
                "was not found when it was built (Debian: libsndfile1-dev libsoxr-dev libpcre2-dev zlib1g-dev "
                "libcli11-dev)"
            )
        model = _C._WhisperModel.load(os.fspath(checkpoint))
        dims = model.dims
        n_vocab = dims["n_vocab"]
        num_languages = n_vocab - 51765 - int(n_vocab >= 51865)
        if tokenizer is None:
            tokenizer = _find_vocabulary(checkpoint, multilingual=n_vocab >= 51865)
        return cls(model, _C._WhisperTokenizer(os.fspath(tokenizer), num_languages, n_vocab), compute_type)

    @property
    def is_multilingual(self) -> bool:
        return self.dims["n_vocab"] >= 51865

    @property
    def alignment_heads(self) -> list:
        """The decoder's (layer, head) pairs whose cross-attention word timestamps
        follow: openai's choice for a checkpoint of one of its releases
        (`whisper._ALIGNMENT_HEADS`), Whisper's default (every head of the last
        half of the layers) otherwise. Set it to pairs, or to one of openai's
        model names ("tiny.en", "base", "large-v3", ...)."""
        return self._model.alignment_heads

    @alignment_heads.setter
    def alignment_heads(self, heads) -> None:
        self._model.alignment_heads = heads if isinstance(heads, str) else [tuple(pair) for pair in heads]

    def log_mel_spectrogram(self, audio, padding: int = 0) -> torch.Tensor:
        """whisper.audio.log_mel_spectrogram(audio, n_mels=dims.n_mels, padding):
        `audio` is 16-kHz samples (a tensor or an array) or an audio file's path."""
        return log_mel_spectrogram(audio, self.dims["n_mels"], padding)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self._model.embed_audio(mel)

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        return self._model.logits(tokens, audio_features)

    def decode(self, mel, options=None, **kwargs):
        """whisper.decode(model, mel, options, **kwargs): log-mel frames
        (n_mels, 3000) or audio features (n_audio_ctx, n_audio_state), or a
        batch of them; one result for a 2-D input, a list for a batch."""
        values = _options(options, kwargs)
        single = mel.ndim == 2
        batch = mel.unsqueeze(0) if single else mel
        ctx, state = self.dims["n_audio_ctx"], self.dims["n_audio_state"]
        features = batch if tuple(batch.shape[-2:]) == (ctx, state) else self.embed_audio(batch)
        features = features.float()
        del values["fp16"]
        values["prompt"] = _token_list(self.tokenizer, values["prompt"])
        values["prefix"] = _token_list(self.tokenizer, values["prefix"])
        out = self._inference.decode(self.tokenizer, features, values)
        results = [
            DecodingResult(audio_features=features[i], **{**r, "language_probs": r["language_probs"] or None})
            for i, r in enumerate(out)
        ]
        return results[0] if single else results

    def transcribe(self, audio, *, verbose=None, vad_parameters=None, vad_model=None, **kwargs) -> dict:
        """whisper.transcribe(model, audio, **kwargs) in C++: `audio` is a file's
        path, or 16-kHz mono samples (a NumPy array or a tensor). Keywords are
        whisper.transcribe's (`temperature`, `compression_ratio_threshold`,
        `logprob_threshold`, `no_speech_threshold`, `condition_on_previous_text`,
        `initial_prompt`, `carry_initial_prompt`, `clip_timestamps`,
        `word_timestamps`, `prepend_punctuations`, `append_punctuations`,
        `hallucination_silence_threshold`), faster-whisper's `vad_filter` and
        `vad_parameters` (a dict of its VadOptions) with `vad_model` (Silero VAD's
        TorchScript file; default: the installed silero-vad's), `batch_size` (its
        batched pipeline: see transcribe_batched), and the
        decoding options (`language`, `task`, `beam_size`, `best_of`, ...), plus
        `seed` (sampling's generator; none: torch's default, as whisper) and
        `reproduce_whisper_samples` (sample with whisper's own torch call: the
        very tokens whisper draws after the same seed, slower). Returns
        whisper's dict: `text`, `segments`, `language`. verbose: True prints each
        segment as whisper does, False shows a progress bar (tqdm, when installed),
        None neither."""
        own, kwargs = self._split_options(kwargs)
        if isinstance(audio, str | os.PathLike):
            audio = load_audio(audio)
        samples = torch.as_tensor(audio).float()
        progress = None
        if verbose:

            def progress(segments, seek, total):
                for s in segments:
                    print(f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] {s['text']}", flush=True)

        elif verbose is False:
            try:
                import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                bar = tqdm.tqdm(total=samples.shape[-1] // 160, unit="frames")
                done = [0]

                def progress(segments, seek, total):
                    bar.update(seek - done[0])
                    done[0] = seek

        vad = self._voice_activity(own, vad_parameters, vad_model)
        try:
            return self._inference.transcribe(self.tokenizer, samples, {**own, **kwargs}, progress, vad)
        finally:
            if verbose is False and progress is not None:
                bar.close()

    def transcribe_batched(self, audios, *, batch_size: int = 8, vad_parameters=None, vad_model=None, **kwargs):
        """faster-whisper's BatchedInferencePipeline over several audios (paths or
        16-kHz samples): the speech Silero VAD finds, gathered into chunks of up to
        30 s, the chunks of all of them decoded `batch_size` at a time, each once at
        the first temperature with no previous text as its prompt. Returns one
        whisper result dict per audio."""
        own, decoding = self._split_options({**kwargs, "batch_size": batch_size})
        vad = self._voice_activity(own, vad_parameters, vad_model)
        samples = [torch.as_tensor(load_audio(a) if isinstance(a, str | os.PathLike) else a).float() for a in audios]
        return self._inference.transcribe_batched(self.tokenizer, samples, {**own, **decoding}, vad)

    def _split_options(self, kwargs):
        """transcribe's own keywords, and the decoding options, as the C++ side takes them."""
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in _TRANSCRIBE_DEFAULTS}
        unknown = set(kwargs) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"transcribe() got unexpected options: {sorted(unknown)}")
        kwargs.pop("fp16", None)  # fp32 on the CPU, as whisper.transcribe there
        if "temperature" in kwargs:  # whisper's decode_options can't hold it either
            raise TypeError("transcribe() got multiple values for temperature")
        if isinstance(kwargs.get("suppress_tokens"), str):
            kwargs["suppress_tokens"] = [int(t) for t in kwargs["suppress_tokens"].split(",") if t]
        for name in ("prompt", "prefix"):
            if kwargs.get(name) is not None:
                kwargs[name] = _token_list(self.tokenizer, kwargs[name])
            else:
                kwargs.pop(name, None)
        temperature = own.get("temperature", _TRANSCRIBE_DEFAULTS["temperature"])
        own["temperature"] = [float(temperature)] if isinstance(temperature, int | float) else list(temperature)
        clips = own.get("clip_timestamps", "0")
        if isinstance(clips, str):
            clips = [float(t) for t in clips.split(",")] if clips else []
        own["clip_timestamps"] = [float(t) for t in clips]
        return own, kwargs

    @staticmethod
    def _voice_activity(own, vad_parameters, vad_model):
        """Silero VAD for the VAD filter or the batched pipeline, and its options in `own`."""
        if not own.get("vad_filter") and own.get("batch_size") is None:
            return None
        if vad_parameters is not None:
            given = vad_parameters
            own["vad_parameters"] = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given)
        return load_silero_vad(vad_model)


def _find_vocabulary(checkpoint, multilingual: bool) -> str:
    """The vocabulary that fits a checkpoint: beside it, or in the installed
    openai-whisper (whisper/assets), as the rotary-whisper command finds it."""
    import importlib.util

    spec = importlib.util.find_spec("whisper")  # (found, not imported)
    folders = [os.path.join(os.path.dirname(spec.origin), "assets")] if spec is not None and spec.origin else []
    return _C._find_vocabulary(os.fspath(checkpoint), multilingual, folders, "tokenizer=PATH")


def load_audio(path, sample_rate: int = 16000) -> torch.Tensor:
    """An audio file as mono fp32 samples at `sample_rate` (libsndfile, libsoxr)."""
    return _C._load_audio(os.fspath(path), sample_rate)


def log_mel_spectrogram(audio, n_mels: int = 80, padding: int = 0) -> torch.Tensor:
    """whisper.audio.log_mel_spectrogram in C++ (16-kHz samples or a path)."""
    if isinstance(audio, str | os.PathLike):
        audio = load_audio(audio)
    return _C._log_mel_spectrogram(torch.as_tensor(audio), n_mels, padding)


def mel_filters(n_mels: int) -> torch.Tensor:
    """librosa's Slaney mel filters for 16 kHz and n_fft 400 (whisper's mel_filters.npz)."""
    return _C._mel_filters(n_mels)


def pad_or_trim(array: torch.Tensor, length: int = 480000) -> torch.Tensor:
    return _C._pad_or_trim(torch.as_tensor(array), length)
