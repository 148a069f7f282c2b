"""Silero VAD in C++ (the silero-vad package's TorchScript model, loaded with
`torch::jit::load`): speech probabilities per 512-sample window and speech
ranges as the package's `get_speech_timestamps` computes them. The model file
is a path you give, or `silero_vad/data/silero_vad.jit` of an installed
silero-vad (found, not imported: importing it sets torch's threads to 1)."""

import functools
import importlib.util
import os

import torch

from . import _C

VAD_OPTIONS = dict(_C._vad_defaults()) if hasattr(_C, "_vad_defaults") else {}


def silero_vad_path() -> str:
    """silero_vad/data/silero_vad.jit of the installed silero-vad package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            "Silero VAD: no model file given and the silero-vad package is not installed "
            "(pip install silero-vad==6.2.3, or pass the path of silero_vad.jit)"
        )
    return os.path.join(os.path.dirname(spec.origin), "data", "silero_vad.jit")


@functools.lru_cache(maxsize=4)
def _load(path: str):
    return _C._SileroVad(path)


def load_silero_vad(path=None):
    """The model at `path` (default: the installed package's), loaded once per path."""
    return _load(os.path.abspath(os.fspath(path) if path is not None else silero_vad_path()))


def speech_timestamps(audio, model=None, **options) -> list:
    """Speech ranges of 16-kHz `audio` as [{"start": sample, "end": sample}, ...]:
    silero-vad's get_speech_timestamps, with faster-whisper's VadOptions names and
    defaults (threshold, neg_threshold, min_speech_duration_ms, max_speech_duration_s,
    min_silence_duration_ms, speech_pad_ms; and min_silence_at_max_speech_ms,
    use_max_poss_sil_at_max_speech). `model`: a loaded model or a path."""
    if model is None or isinstance(model, str | os.PathLike):
        model = load_silero_vad(model)
    return model.speech_timestamps(torch.as_tensor(audio).float(), options)
