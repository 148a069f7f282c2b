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

`CppDecoder(model)` runs the same loop over this library's C++ decoder (what
`rotary_attention.cpp.Whisper` decodes with): a copy of the decoder's weights,
fp32 or int8, with its own caches; Python runs only Whisper's loop.

    decoder = CppDecoder(model, compute_type="int8")
    results = decoder.decode(mel, options)

Whisper is not a dependency of this package: only these functions need it.
"""

import contextlib
from dataclasses import replace

import torch
from torch import Tensor

from .layers import KVCache, MultiHeadAttention, RotaryEmbedding, RotationLayer, _global_hooks, _hooked


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
    return _use_inference(task, KVCacheInference(task.model, len(task.initial_tokens), capacity))


def _use_inference(task, inference):
    task.inference = inference
    if hasattr(task.decoder, "inference"):  # BeamSearchDecoder keeps its own reference
        task.decoder.inference = inference
    return task


def _decode(model, mel: Tensor, options, kwargs, use):
    """`whisper.decode`'s body, the task passed through `use` before it runs."""
    from whisper.decoding import DecodingOptions, DecodingTask

    options = options if options is not None else DecodingOptions()
    if kwargs:
        options = replace(options, **kwargs)
    single = mel.ndim == 2
    if single:
        mel = mel.unsqueeze(0)
    result = use(DecodingTask(model, options)).run(mel)
    return result[0] if single else result


def decode_with_kv_cache(model, mel: Tensor, options=None, **kwargs):
    """`whisper.decode(model, mel, options, **kwargs)` over a KVCache."""
    return _decode(model, mel, options, kwargs, use_kv_cache)


def _decoder_is_plain(decoder) -> str | None:
    """Why the C++ decoder would not compute what `decoder` computes (None: it
    would): a module of another class, a hook, a tensor subclass, or attention
    options other than the defaults."""
    import whisper.model

    if _global_hooks():
        return "global module hooks are registered"
    allowed = (whisper.model.TextDecoder, whisper.model.ResidualAttentionBlock, whisper.model.LayerNorm,
               whisper.model.Linear, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding, torch.nn.Sequential,
               torch.nn.ModuleList, torch.nn.GELU, torch.nn.Dropout, MultiHeadAttention, RotaryEmbedding,
               RotationLayer)  # fmt: skip
    modules = [(f"decoder.{name}" if name else "decoder", m) for name, m in decoder.named_modules()]
    for where, module in modules:
        if type(module) not in allowed:
            return f"{where} is a {type(module).__name__}"
        if _hooked(module):
            return f"{where} has hooks"
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors):
            return f"{where} holds tensor subclasses"
    for where, module in modules:
        if isinstance(module, MultiHeadAttention) and (
            not module.sdpa or module.group_norm or module.absolute_positions or not module._children_are_plain()
        ):
            return f"{where} is not a default MultiHeadAttention (sdpa, LayerNorm, relative positions)"
    return None


class CppDecoderInference:
    """Whisper's `Inference` protocol over a `CppDecoder`."""

    def __init__(self, inference, initial_token_length: int):
        self._inference = inference
        self.initial_token_length = initial_token_length

    def logits(self, tokens: Tensor, audio_features: Tensor) -> Tensor:
        if tokens.shape[-1] > self.initial_token_length:
            tokens = tokens[:, -1:]  # past the prompt only the newest token is new
        return self._inference.logits(tokens, audio_features)

    def rearrange_kv_cache(self, source_indices) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            self._inference.reorder(list(source_indices))

    def cleanup_caching(self) -> None:
        self._inference.reset()


class CppDecoder:
    """A Whisper fork's decoder as this library's C++ decoder runs it: a copy of
    the weights as they are when it is made (fp32, or int8 per output row with
    compute_type="int8"), self-attention keys kept rotated, a beam's audio read
    once per step. `decode` and `use` run openai-whisper's own loop over it.

    The decoder must be what the C++ one computes: whisper's modules with this
    library's default `MultiHeadAttention` layers, no hooks, no tensor
    subclasses (a LoRA, a torchao weight or a hook is refused: decode those with
    `decode_with_kv_cache`)."""

    def __init__(self, model, compute_type: str = "float32"):
        from . import _C

        if not hasattr(_C, "_WhisperInference"):
            raise RuntimeError("rotary_attention was built without the Whisper fork (see cpp.Whisper.load)")
        reason = _decoder_is_plain(model.decoder)
        if reason is not None:
            raise ValueError(f"CppDecoder: the C++ decoder would not compute this model's decoder: {reason}")
        dims = {k: int(v) for k, v in vars(model.dims).items()}
        state = {k: v.detach() for k, v in model.state_dict().items()}
        self.model = model
        self.compute_type = compute_type
        self._inference = _C._WhisperInference(_C._WhisperModel.from_state_dict(dims, state), compute_type)

    def use(self, task):
        """Makes a `whisper.decoding.DecodingTask` decode through this decoder
        (its inference, and the beam search's reference to it). Returns the task."""
        return _use_inference(task, CppDecoderInference(self._inference, len(task.initial_tokens)))

    def decode(self, mel: Tensor, options=None, **kwargs):
        """`whisper.decode(model, mel, options, **kwargs)` with this decoder (the
        model it was made from encodes mel frames)."""
        return _decode(self.model, mel, options, kwargs, self.use)
