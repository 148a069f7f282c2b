#include "torch_save_writer.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>

namespace rotary_attention::detail {

void write_torch_save_dict(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path) {
  // torch.save's zip layout: data.pkl plus one record per storage under data/.
  // torch::pickle_save would tag the dict with a TorchScript type, which
  // torch.load(weights_only=True) refuses; an untagged dict loads anywhere.
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, tensor] : tensors) {
    dict.insert(name, tensor.detach());
  }
  std::vector<char> pickled;
  int64_t next_id = 0;
  torch::jit::Pickler pickler(
      [&](const char* data, size_t size) { pickled.insert(pickled.end(), data, data + size); },
      /*tensor_table=*/nullptr,
      /*type_renamer=*/nullptr,
      /*memoized_class_types=*/nullptr,
      /*get_tensor_id=*/[&](const at::Tensor&) { return std::to_string(next_id++); },
      /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(dict);
  pickler.stop();

  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("byteorder", "little", 6);
  for (size_t i = 0; i < pickler.tensorData().size(); ++i) {
    const auto data = torch::jit::getWriteableTensorData(pickler.tensorData()[i]);
    writer.writeRecord("data/" + std::to_string(i), data.data(), data.sizeInBytes());
  }
  writer.writeRecord("data.pkl", pickled.data(), pickled.size());
  writer.writeEndOfFile();
  TORCH_CHECK(writer.finalized(), "save_tensors: writing '", path, "' failed");
}

} // namespace rotary_attention::detail
