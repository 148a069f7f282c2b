#pragma once
// F.linear over many rows (an encoder's 1500 frames, the audio's keys and
// values): through oneDNN's matmul on CPUs where MKL's SGEMM, which at::linear
// calls, runs a slower path. MKL gives AMD's processors its AVX2 code: on a
// Zen 5 with AVX-512 it reached about 215 GFLOP/s on the encoder's products
// where oneDNN reached about 460 (benchmarks/bench_dense_linear.py). CTranslate2 makes the same
// choice (MKL on Intel, oneDNN elsewhere).

#include <ATen/core/Tensor.h>

namespace rotary_attention::whisper::detail {

enum class DenseLinearBackend {
  kATen,   ///< at::linear (MKL's SGEMM in torch's x86 builds)
  kOneDnn, ///< oneDNN's matmul (torch's mkldnn::_linear_pointwise)
};

/// The backend for this machine: oneDNN on x86 CPUs that are not Intel's,
/// at::linear elsewhere; RA_DENSE_LINEAR=onednn or =aten overrides it (read
/// once).
DenseLinearBackend dense_linear_backend();

/// x @ weight^T + bias (bias may be undefined) with `backend`; at::linear
/// wherever oneDNN's op does not apply (not fp32 on the CPU, a gradient
/// asked for, a torch without oneDNN). The two differ by fp32 rounding.
at::Tensor dense_linear(
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& bias,
    DenseLinearBackend backend);

/// dense_linear with this machine's backend.
inline at::Tensor dense_linear(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return dense_linear(x, weight, bias, dense_linear_backend());
}

/// Whether dense_attention takes (q, k) on this machine: oneDNN is the backend,
/// fp32 on the CPU, no gradient recorded, and more queries than one block.
bool dense_attention_applies(const at::Tensor& q, const at::Tensor& k);

/// softmax(q k^T / sqrt(D)) v per head, unmasked (an encoder's self-attention):
/// q (B, T, n_state), k and v (B, S, n_state) -> (B, T, n_state). Its products
/// through oneDNN, 512 queries of a head at a time (their scores stay in the
/// core's cache): torch's CPU flash attention runs its products through MKL,
/// 25 ms a layer of Whisper base's encoder on a Zen 5 against 16 ms here. The
/// same attention to fp32 rounding.
at::Tensor dense_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t n_head);

} // namespace rotary_attention::whisper::detail
