"""The Whisper fork in C++, from Python: `Whisper.load(checkpoint, tokenizer=path)`
reads a checkpoint as openai-whisper saves it, and `decode` runs the C++
decoding loop (openai-whisper's `DecodingTask` at temperature 0) with no
Python per step. Its options are `whisper.decoding.DecodingOptions` or their
field names; its results carry `whisper.decoding.DecodingResult`'s fields.
openai-whisper is not needed."""

import dataclasses
import math
import os
import zlib
from dataclasses import dataclass, field

import torch

from . import _C

# whisper.decoding.DecodingOptions' fields and defaults.
_DEFAULTS = dict(
    task="transcribe",
    language=None,
    temperature=0.0,
    sample_len=None,
    best_of=None,
    beam_size=None,
    patience=None,
    length_penalty=None,
    prompt=None,
    prefix=None,
    suppress_tokens="-1",
    suppress_blank=True,
    without_timestamps=False,
    max_initial_timestamp=1.0,
    fp16=True,
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


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


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
    for name in ("prompt", "prefix"):
        if isinstance(values[name], str):
            raise TypeError(
                f"{name} must be a list of token ids: the C++ tokenizer does not encode whole texts "
                "(encode it with whisper.tokenizer.get_tokenizer(...).encode)"
            )
    suppress = values["suppress_tokens"]
    if isinstance(suppress, str):
        suppress = [int(t) for t in suppress.split(",")] if suppress else []
    values["suppress_tokens"] = list(suppress) if suppress is not None else []
    values["prompt"] = list(values["prompt"] or [])
    values["prefix"] = list(values["prefix"] or [])
    return values


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
    def load(cls, checkpoint, tokenizer, compute_type: str = "float32"):
        """checkpoint: a file saved as openai-whisper saves it
        (`{"dims": ..., "model_state_dict": ...}`, fp16 or fp32); tokenizer: the
        `.tiktoken` vocabulary that fits it (gpt2 for English-only models,
        multilingual otherwise). compute_type: the weights a decode step reads,
        "float32" or "int8" (quantized once here, per output row)."""
        if not hasattr(_C, "_WhisperModel"):
            raise RuntimeError(
                "rotary_attention was built without the Whisper fork: libsndfile, libsoxr and CLI11 were not "
                "found when it was built (Debian: libsndfile1-dev libsoxr-dev libcli11-dev)"
            )
        model = _C._WhisperModel.load(os.fspath(checkpoint))
        dims = model.dims
        n_vocab = dims["n_vocab"]
        num_languages = n_vocab - 51765 - int(n_vocab >= 51865)
        return cls(model, _C._WhisperTokenizer(os.fspath(tokenizer), num_languages, n_vocab), compute_type)

    @property
    def is_multilingual(self) -> bool:
        return self.dims["n_vocab"] >= 51865

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
        out = self._inference.decode(self.tokenizer, features, **values)
        results = [
            DecodingResult(
                audio_features=features[i],
                compression_ratio=_compression_ratio(r["text"]),
                **{**r, "language_probs": r["language_probs"] or None},
            )
            for i, r in enumerate(out)
        ]
        return results[0] if single else results


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
