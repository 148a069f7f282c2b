#include "zip_archive.h"

#include <c10/util/Exception.h>
#include <zip.h>

#include <filesystem>

namespace rotary_attention::detail {
namespace {

// Deflate expands at most about 1032 times; a stored record is its own size.
constexpr uint64_t kMaxDeflateRatio = 1032;

} // namespace

ZipArchive::ZipArchive(const std::string& path) : path_(path) {
  std::error_code error;
  file_bytes_ = std::filesystem::file_size(path, error);
  TORCH_CHECK(!error, "load_tensors: cannot open '", path, "'");
  int code = 0;
  zip_ = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
  if (zip_ == nullptr) {
    zip_error_t reason;
    zip_error_init_with_code(&reason, code);
    const std::string text = zip_error_strerror(&reason);
    zip_error_fini(&reason);
    TORCH_CHECK(false, "load_tensors: '", path, "' is not a torch.save zip file (", text, ")");
  }
  const char* first = zip_get_num_entries(zip_, 0) > 0 ? zip_get_name(zip_, 0, 0) : nullptr;
  const std::string first_name = first != nullptr ? first : "";
  const size_t slash = first_name.find('/');
  TORCH_CHECK(
      slash != std::string::npos,
      "load_tensors: '",
      path,
      "' is a zip file but not torch.save's (its records are not under one folder)");
  folder_ = first_name.substr(0, slash + 1);
}

ZipArchive::~ZipArchive() {
  if (zip_ != nullptr) {
    zip_discard(zip_);
  }
}

int64_t ZipArchive::index(const std::string& name) const {
  return zip_name_locate(zip_, (folder_ + name).c_str(), 0);
}

bool ZipArchive::has(const std::string& name) const {
  return index(name) >= 0;
}

uint64_t ZipArchive::size(const std::string& name) const {
  const int64_t i = index(name);
  TORCH_CHECK(i >= 0, "load_tensors: '", path_, "' has no record ", name);
  zip_stat_t stat;
  TORCH_CHECK(
      zip_stat_index(zip_, static_cast<uint64_t>(i), 0, &stat) == 0 &&
          (stat.valid & ZIP_STAT_SIZE) && (stat.valid & ZIP_STAT_COMP_SIZE) &&
          (stat.valid & ZIP_STAT_COMP_METHOD),
      "load_tensors: cannot read the zip directory entry of ",
      name,
      " in '",
      path_,
      "'");
  const bool stored = stat.comp_method == ZIP_CM_STORE;
  TORCH_CHECK(
      stat.comp_size <= file_bytes_ &&
          (stored ? stat.size == stat.comp_size : stat.size / kMaxDeflateRatio <= stat.comp_size),
      "load_tensors: the record ",
      name,
      " of '",
      path_,
      "' claims ",
      stat.size,
      " bytes, more than the file's ",
      file_bytes_,
      " bytes can hold");
  return stat.size;
}

void ZipArchive::read(const std::string& name, void* dst, uint64_t nbytes) const {
  TORCH_CHECK(
      size(name) == nbytes, "load_tensors: the record ", name, " is not ", nbytes, " bytes");
  zip_stat_t stat;
  zip_stat_index(zip_, static_cast<uint64_t>(index(name)), 0, &stat);
  // Files saved with torch.serialization.config.save.compute_crc32 = False
  // carry a zero CRC: their stored records are read as they are, unchecked.
  const bool unchecked = stat.comp_method == ZIP_CM_STORE && (stat.valid & ZIP_STAT_CRC) &&
                         stat.crc == 0 && nbytes > 0;
  zip_file_t* file =
      zip_fopen_index(zip_, static_cast<uint64_t>(index(name)), unchecked ? ZIP_FL_COMPRESSED : 0);
  TORCH_CHECK(
      file != nullptr,
      "load_tensors: cannot open the record ",
      name,
      " of '",
      path_,
      "' (",
      zip_strerror(zip_),
      ")");
  const int64_t got = zip_fread(file, dst, nbytes);
  const std::string reason = got < 0 ? zip_file_strerror(file) : "the record is short";
  zip_fclose(file);
  TORCH_CHECK(
      got == static_cast<int64_t>(nbytes),
      "load_tensors: cannot read the record ",
      name,
      " of '",
      path_,
      "' (",
      reason,
      ")");
}

} // namespace rotary_attention::detail
