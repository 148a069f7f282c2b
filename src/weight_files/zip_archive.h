#pragma once
// Read access to the records of torch.save's zip container, through libzip.
// Every record's size is checked against the file before a caller allocates
// for it (LibTorch's own reader allocates what the zip directory claims).

#include <cstdint>
#include <string>

struct zip;

namespace rotary_attention::detail {

class ZipArchive {
 public:
  /// Opens `path`; a file that is not a consistent zip archive is an error.
  explicit ZipArchive(const std::string& path);
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  /// torch.save puts its records under one top folder ("archive/data.pkl");
  /// names here are relative to it.
  bool has(const std::string& name) const;
  /// The record's size, checked to be no more than the file can hold.
  uint64_t size(const std::string& name) const;
  /// Reads the whole record (exactly `size(name)` bytes) into dst.
  void read(const std::string& name, void* dst, uint64_t nbytes) const;

 private:
  int64_t index(const std::string& name) const;

  struct zip* zip_ = nullptr;
  std::string path_;
  std::string folder_;
  uint64_t file_bytes_ = 0;
};

} // namespace rotary_attention::detail
