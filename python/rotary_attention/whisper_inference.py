"""openai-whisper's own decoding loop (`whisper.decoding.DecodingTask`: greedy,
beam search, its logit filters and ranking) over a `KVCache` instead of
Whisper's forward hooks: the layers then take the fast road (one operator call
per layer), cross-attention keys are computed once per audio instead of once
per step, and a beam search reorders the cache's buffers.

    task = whisper.decoding.DecodingTask(model, options)
    use_kv_cache(task)
    results = task.run(mel)

or `decode_with_kv_cache(model, mel, options)`, `whisper.decode`'s signature.
The model's decoder attention layers must be `rotary_attention.MultiHeadAttention`
(with their default semantics the tokens are those of Whisper's own loop).
Whisper is not a dependency of this package: only these functions need it.
"""

import contextlib
from dataclasses import replace

import torch
from torch import Tensor

from .layers import KVCache


@contextlib.contextmanager
def whisper_attention_class(cls):
    """Within it, `whisper.model.Whisper(dims)` builds its attention layers as
    `cls` (e.g. rotary_attention.MultiHeadAttention), and Whisper's own
    `install_kv_cache_hooks` hooks them: it looks the class up when called."""
    import whisper.model

    saved = whisper.model.MultiHeadAttention
    whisper.model.MultiHeadAttention = cls
    try:
        yield
    finally:
        whisper.model.MultiHeadAttention = saved


class KVCacheInference:
    """Whisper's `Inference` protocol (`logits`, `rearrange_kv_cache`,
    `cleanup_caching`) over a `rotary_attention.KVCache`."""

    def __init__(self, model, initial_token_length: int, capacity: int | None = None):
        self.model = model
        self.initial_token_length = initial_token_length
        # Room for every token Whisper may decode, so the buffers never grow.
        self.capacity = capacity if capacity is not None else model.dims.n_text_ctx
        self.kv_cache = KVCache(self.capacity)

    def logits(self, tokens: Tensor, audio_features: Tensor) -> Tensor:
        if tokens.shape[-1] > self.initial_token_length:
            # Past the prompt only the newest token is new (as PyTorchInference).
            tokens = tokens[:, -1:]
        return self.model.decoder(tokens, audio_features, kv_cache=self.kv_cache)

    def rearrange_kv_cache(self, source_indices) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            self.kv_cache.reorder(torch.as_tensor(source_indices, dtype=torch.long))

    def cleanup_caching(self) -> None:
        self.kv_cache.clear()


def use_kv_cache(task, capacity: int | None = None):
    """Makes a `whisper.decoding.DecodingTask` decode over a KVCache: its
    inference, and the beam-search decoder's reference to it, are replaced.
    Returns the task."""
    inference = KVCacheInference(task.model, len(task.initial_tokens), capacity)
    task.inference = inference
    if hasattr(task.decoder, "inference"):  # BeamSearchDecoder keeps its own reference
        task.decoder.inference = inference
    return task


def decode_with_kv_cache(model, mel: Tensor, options=None, **kwargs):
    """`whisper.decode(model, mel, options, **kwargs)` over a KVCache."""
    from whisper.decoding import DecodingOptions, DecodingTask

    options = options if options is not None else DecodingOptions()
    if kwargs:
        options = replace(options, **kwargs)
    single = mel.ndim == 2
    if single:
        mel = mel.unsqueeze(0)
    result = use_kv_cache(DecodingTask(model, options)).run(mel)
    return result[0] if single else result
