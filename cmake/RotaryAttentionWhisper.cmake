# The whole Whisper fork in C++ (model, log-mel front end, tokenizer, decoding
# loop): librotary_whisper beside the layer library, and the rotary-whisper
# command. Audio files are decoded by libsndfile and resampled by libsoxr
# (Debian libsndfile1-dev, libsoxr-dev), linked privately: a consumer of the
# library needs neither header.
set(RA_WHISPER_ENABLED OFF)
if(RA_BUILD_WHISPER STREQUAL "OFF")
  return()
endif()
pkg_check_modules(SNDFILE IMPORTED_TARGET sndfile>=1.0.28)
pkg_check_modules(SOXR IMPORTED_TARGET soxr>=0.1.3)
# PCRE2: the tokenizer's split pattern (Unicode letters, numbers, spaces), as tiktoken's.
pkg_check_modules(PCRE2 IMPORTED_TARGET libpcre2-8>=10.34)
find_package(ZLIB)
find_package(CLI11 QUIET)
if(NOT (SNDFILE_FOUND AND SOXR_FOUND AND PCRE2_FOUND AND ZLIB_FOUND AND CLI11_FOUND))
  if(RA_BUILD_WHISPER STREQUAL "ON")
    message(FATAL_ERROR "RA_BUILD_WHISPER=ON needs libsndfile, libsoxr, PCRE2, zlib and CLI11 "
                        "(Debian: libsndfile1-dev libsoxr-dev libpcre2-dev zlib1g-dev libcli11-dev)")
  endif()
  message(STATUS "rotary_attention: the Whisper fork is not built (libsndfile, libsoxr, PCRE2, zlib or CLI11 not found)")
  return()
endif()
set(RA_WHISPER_ENABLED ON)

add_library(rotary_whisper SHARED
  src/whisper/model.cpp
  src/whisper/plain_attention.cpp
  src/whisper/few_rows_linear.cpp
  src/whisper/dense_linear.cpp
  src/whisper/log_mel.cpp
  src/whisper/audio_file.cpp
  src/whisper/tokenizer.cpp
  src/whisper/logit_filters.cpp
  src/whisper/token_search.cpp
  src/whisper/cached_text_decoder.cpp
  src/whisper/whisper_inference.cpp
  src/whisper/decoding_task.cpp
  src/whisper/alignment_heads.cpp
  src/whisper/word_timing.cpp
  src/whisper/voice_activity.cpp
  src/whisper/segmenter.cpp
  src/whisper/transcribe.cpp
  src/whisper/batched_transcription.cpp
  src/whisper/writers.cpp)
add_library(RotaryAttention::whisper ALIAS rotary_whisper)
# The one file that needs TorchScript's headers compiles beside the batch.
set_source_files_properties(src/whisper/voice_activity.cpp PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
target_link_libraries(rotary_whisper PUBLIC rotary_attention
  PRIVATE PkgConfig::SNDFILE PkgConfig::SOXR PkgConfig::PCRE2 ZLIB::ZLIB)
# at::parallel_for runs serially unless this code is built with torch's OpenMP.
target_link_libraries(rotary_whisper PRIVATE OpenMP::OpenMP_CXX)
target_compile_options(rotary_whisper PRIVATE -Wall -Wextra -Wno-unused-parameter)
# One unity batch (the library's reason, CMakeLists.txt): 36 CPU-s, 51 in
# batches of ten.
set_target_properties(rotary_whisper PROPERTIES
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
  UNITY_BUILD ${RA_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE 0
  BUILD_RPATH "$ORIGIN;$ORIGIN/../torch/lib;${TORCH_INSTALL_PREFIX}/lib"
  INSTALL_RPATH "$ORIGIN;${TORCH_INSTALL_PREFIX}/lib")

# The command: argument parsing by CLI11 (Debian libcli11-dev, header-only),
# JSON lines by nlohmann/json.
add_executable(rotary_whisper_command tools/rotary_whisper.cpp)
set_target_properties(rotary_whisper_command PROPERTIES
  OUTPUT_NAME rotary-whisper
  RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/bin
  # In the Python package it lies in rotary_attention/bin, beside torch.
  BUILD_RPATH "$ORIGIN/..;$ORIGIN/../../torch/lib;$<TARGET_FILE_DIR:rotary_whisper>;$<TARGET_FILE_DIR:rotary_attention>;${TORCH_INSTALL_PREFIX}/lib"
  INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR};${TORCH_INSTALL_PREFIX}/lib")
target_link_libraries(rotary_whisper_command PRIVATE rotary_whisper CLI11::CLI11 nlohmann_json::nlohmann_json)
