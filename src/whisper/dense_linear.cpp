#include "dense_linear.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace rotary_attention::whisper::detail {

namespace {

bool is_intel_cpu() {
#if defined(__x86_64__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) {
    return false;
  }
  char vendor[13];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  vendor[12] = '\0';
  return std::strcmp(vendor, "GenuineIntel") == 0;
#else
  return true; // (not x86: no MKL to avoid)
#endif
}

DenseLinearBackend backend_for_this_machine() {
  if (const char* forced = std::getenv("RA_DENSE_LINEAR")) {
    const std::string name = forced;
    TORCH_CHECK(
        name == "onednn" || name == "aten",
        "RA_DENSE_LINEAR: expected onednn or aten, got '",
        name,
        "'");
    return name == "onednn" ? DenseLinearBackend::kOneDnn : DenseLinearBackend::kATen;
  }
#if defined(__x86_64__)
  return is_intel_cpu() ? DenseLinearBackend::kATen : DenseLinearBackend::kOneDnn;
#else
  return DenseLinearBackend::kATen;
#endif
}

using LinearPointwise = at::Tensor(
    const at::Tensor&,
    const at::Tensor&,
    const std::optional<at::Tensor>&,
    c10::string_view,
    c10::List<std::optional<at::Scalar>>,
    std::optional<c10::string_view>);

// torch's own oneDNN linear (the op Inductor's CPU code calls), when this
// torch has it.
const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& onednn_linear() {
  static const auto op = []() -> std::optional<c10::TypedOperatorHandle<LinearPointwise>> {
    if (!at::hasMKLDNN()) {
      return std::nullopt;
    }
    const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
      return std::nullopt;
    }
    return handle->typed<LinearPointwise>();
  }();
  return op;
}

} // namespace

DenseLinearBackend dense_linear_backend() {
  static const DenseLinearBackend backend = backend_for_this_machine();
  return backend;
}

at::Tensor dense_linear(
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& bias,
    DenseLinearBackend backend) {
  const bool fp32_cpu =
      x.device().is_cpu() && x.scalar_type() == at::kFloat && weight.device().is_cpu() &&
      weight.scalar_type() == at::kFloat && weight.dim() == 2 && x.dim() >= 2 &&
      x.size(-1) == weight.size(1) &&
      (!bias.defined() || (bias.scalar_type() == at::kFloat && bias.device().is_cpu()));
  const bool needs_grad =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  const auto& op = onednn_linear();
  if (backend != DenseLinearBackend::kOneDnn || !fp32_cpu || needs_grad || !op || x.numel() == 0) {
    return at::linear(x, weight, bias);
  }
  std::optional<at::Tensor> b;
  if (bias.defined()) {
    b = bias.contiguous();
  }
  return op->call(
      x.contiguous(), weight.contiguous(), b, "none", c10::List<std::optional<at::Scalar>>(), "");
}

namespace {
constexpr int64_t kQueryBlock = 512;
}

bool dense_attention_applies(const at::Tensor& q, const at::Tensor& k) {
  return dense_linear_backend() == DenseLinearBackend::kOneDnn && onednn_linear() &&
         !at::GradMode::is_enabled() && q.device().is_cpu() && q.scalar_type() == at::kFloat &&
         k.scalar_type() == at::kFloat && q.dim() == 3 && q.size(1) > kQueryBlock;
}

at::Tensor dense_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t n_head) {
  const int64_t B = q.size(0), T = q.size(1), S = k.size(1), n = q.size(2), D = n / n_head;
  const auto by_head = [&](const at::Tensor& x, int64_t steps) {
    return x.reshape({B, steps, n_head, D}).transpose(1, 2); // (B, H, steps, D)
  };
  const auto queries = by_head(q * (1.0 / std::sqrt(static_cast<double>(D))), T).contiguous();
  const auto keys = by_head(k, S).contiguous();
  const auto values_t = by_head(v, S).transpose(2, 3).contiguous(); // (B, H, D, S)
  auto out = at::empty({B, T, n_head, D}, q.options());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < n_head; ++h) {
      for (int64_t first = 0; first < T; first += kQueryBlock) {
        const int64_t count = std::min(kQueryBlock, T - first);
        auto scores = dense_linear(queries[b][h].narrow(0, first, count), keys[b][h], {});
        scores = at::softmax(scores, -1);
        out[b].narrow(0, first, count).select(1, h).copy_(dense_linear(scores, values_t[b][h], {}));
      }
    }
  }
  return out.view({B, T, n});
}

} // namespace rotary_attention::whisper::detail
