#include "safetensors_file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

namespace rotary_attention::detail {
namespace {

using nlohmann::json;

struct DtypeName {
  const char* name;
  c10::ScalarType dtype;
};

// Every safetensors dtype that torch has.
constexpr std::array<DtypeName, 15> kDtypes{{
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U64", at::kUInt64},
    {"U32", at::kUInt32},
    {"U16", at::kUInt16},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
}};

// The safetensors library refuses headers above 100 MB; so does this reader.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

c10::ScalarType dtype_of(const std::string& name, const std::string& key) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      return d.dtype;
    }
  }
  TORCH_CHECK(
      false, "load_tensors: \"", key, "\" has the unknown safetensors dtype \"", name, "\"");
}

const char* name_of(c10::ScalarType dtype, const std::string& key) {
  for (const auto& d : kDtypes) {
    if (dtype == d.dtype) {
      return d.name;
    }
  }
  TORCH_CHECK(
      false, "save_tensors: \"", key, "\" has dtype ", dtype, ", which safetensors cannot hold");
}

uint64_t little_endian_u64(const char* bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) {
    v = (v << 8) | static_cast<uint8_t>(bytes[i]);
  }
  return v;
}

struct Entry {
  std::string key;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& key, const json& value, uint64_t data_bytes) {
  TORCH_CHECK(
      value.is_object() && value.contains("dtype") && value.contains("shape") &&
          value.contains("data_offsets"),
      "load_tensors: the safetensors header entry \"",
      key,
      "\" needs dtype, shape and data_offsets");
  const json& dtype = value["dtype"];
  const json& shape = value["shape"];
  const json& offsets = value["data_offsets"];
  TORCH_CHECK(dtype.is_string(), "load_tensors: the dtype of \"", key, "\" is not a string");
  Entry entry{key, dtype_of(dtype.get<std::string>(), key), {}, 0, 0};

  TORCH_CHECK(shape.is_array(), "load_tensors: the shape of \"", key, "\" is not a list");
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& size : shape) {
    TORCH_CHECK(
        size.is_number_unsigned(),
        "load_tensors: the shape of \"",
        key,
        "\" holds ",
        size.dump(),
        ", not a non-negative integer");
    const uint64_t s = size.get<uint64_t>();
    TORCH_CHECK(
        s <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
        "load_tensors: the shape of \"",
        key,
        "\" holds a size too large");
    entry.shape.push_back(static_cast<int64_t>(s));
    overflow = overflow || (s != 0 && numel > std::numeric_limits<uint64_t>::max() / s);
    numel *= s;
  }
  const uint64_t item = c10::elementSize(entry.dtype);
  overflow = overflow || numel > std::numeric_limits<uint64_t>::max() / item;
  TORCH_CHECK(
      offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
          offsets[1].is_number_unsigned(),
      "load_tensors: data_offsets of \"",
      key,
      "\" must be two non-negative integers [begin, end]");
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  TORCH_CHECK(
      entry.begin <= entry.end && entry.end <= data_bytes,
      "load_tensors: data_offsets [",
      entry.begin,
      ", ",
      entry.end,
      "] of \"",
      key,
      "\" lie outside the file's ",
      data_bytes,
      " data bytes");
  TORCH_CHECK(
      !overflow && numel * item == entry.end - entry.begin,
      "load_tensors: \"",
      key,
      "\" has shape ",
      shape.dump(),
      " of ",
      dtype.get<std::string>(),
      ", which does not fill its ",
      entry.end - entry.begin,
      " bytes");
  return entry;
}

} // namespace

bool starts_like_safetensors(const std::string& first_bytes) {
  return first_bytes.size() >= 9 && first_bytes[8] == '{';
}

std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path) {
  std::error_code error;
  const uint64_t file_bytes = std::filesystem::file_size(path, error);
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(!error && in.good(), "load_tensors: cannot open '", path, "'");
  char length[8];
  TORCH_CHECK(
      file_bytes >= 8 && in.read(length, 8),
      "load_tensors: '",
      path,
      "' is too short for a safetensors file");
  const uint64_t header_bytes = little_endian_u64(length);
  TORCH_CHECK(
      header_bytes <= file_bytes - 8 && header_bytes <= kMaxHeaderBytes,
      "load_tensors: the safetensors header of '",
      path,
      "' claims ",
      header_bytes,
      " bytes; the file holds ",
      file_bytes - 8,
      " after the length (at most ",
      kMaxHeaderBytes,
      " allowed)");
  std::string header(header_bytes, '\0');
  TORCH_CHECK(in.read(header.data(), header_bytes), "load_tensors: cannot read '", path, "'");

  // The header is two levels deep ({key: {field: [numbers]}}); deeper nesting
  // is refused while parsing, before it is built.
  bool too_deep = false;
  const json::parser_callback_t depth_limit = [&](int depth, json::parse_event_t, json&) {
    too_deep = too_deep || depth > 3;
    return !too_deep;
  };
  const json root = json::parse(header, depth_limit, /*allow_exceptions=*/false);
  TORCH_CHECK(
      !root.is_discarded() && !too_deep && root.is_object(),
      "load_tensors: the safetensors header of '",
      path,
      "' is not a JSON object of tensor entries",
      too_deep ? " (nested too deeply)" : "");

  const uint64_t data_bytes = file_bytes - 8 - header_bytes;
  std::vector<Entry> entries;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      TORCH_CHECK(value.is_object(), "load_tensors: __metadata__ of '", path, "' is not an object");
      for (const auto& [name, text] : value.items()) {
        TORCH_CHECK(text.is_string(), "load_tensors: __metadata__ \"", name, "\" is not a string");
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, data_bytes));
  }
  // As the safetensors library requires: the byte ranges tile the data
  // exactly, no gap and no overlap.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t covered = 0;
  for (const Entry& e : entries) {
    TORCH_CHECK(
        e.begin == covered,
        "load_tensors: the data of \"",
        e.key,
        "\" in '",
        path,
        "' starts at byte ",
        e.begin,
        ", expected ",
        covered,
        " (tensors must not overlap or leave gaps)");
    covered = e.end;
  }
  TORCH_CHECK(
      covered == data_bytes,
      "load_tensors: '",
      path,
      "' holds ",
      data_bytes - covered,
      " data bytes that no tensor uses");

  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(entries.size());
  for (const Entry& e : entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    const uint64_t nbytes = e.end - e.begin;
    if (nbytes > 0) {
      in.seekg(static_cast<std::streamoff>(8 + header_bytes + e.begin));
      TORCH_CHECK(
          in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(nbytes)),
          "load_tensors: cannot read the data of \"",
          e.key,
          "\" in '",
          path,
          "'");
    }
    out.emplace_back(e.key, std::move(t));
  }
  return out;
}

void write_safetensors(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path) {
  static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [key, tensor] : tensors) {
    TORCH_CHECK(key != "__metadata__", "save_tensors: \"__metadata__\" cannot name a tensor");
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = t.nbytes();
    header[key] = {
        {"dtype", name_of(t.scalar_type(), key)},
        {"shape", t.sizes().vec()},
        {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  // Padded with spaces so the data starts 8-byte aligned, as the library does.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  TORCH_CHECK(out.good(), "save_tensors: cannot write '", path, "'");
  char length[8];
  for (int i = 0; i < 8; ++i) {
    length[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  }
  out.write(length, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const at::Tensor& t : data) {
    out.write(
        static_cast<const char*>(t.const_data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  }
  out.close();
  TORCH_CHECK(out.good(), "save_tensors: writing '", path, "' failed");
}

} // namespace rotary_attention::detail
