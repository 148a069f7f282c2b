# Torch's headers are most of the time of every C++ file here (a test or
# example file spent about 45 of its 50 s in them). The test and example
# programs parse them once, into a precompiled header of torch/torch.h and the
# umbrella header, built by rotary_attention_program_headers (an object library
# with an empty source, compiled as the programs are) and reused by each
# program. The library has none: it compiles as a few unity batches
# (CMakeLists.txt), which parse the headers about as often as a precompiled
# header would be built and loaded, and start at once.
# RA_PRECOMPILE_HEADERS=OFF compiles every program from its own includes.
option(RA_PRECOMPILE_HEADERS "Precompile torch's headers for the tests and examples" ON)

# Gives `target` (a program linked to rotary_attention) the programs' shared
# precompiled header.
function(ra_precompile_program_headers target)
  if(NOT RA_PRECOMPILE_HEADERS)
    return()
  endif()
  if(NOT TARGET rotary_attention_program_headers)
    add_library(rotary_attention_program_headers OBJECT ${PROJECT_SOURCE_DIR}/cmake/empty.cpp)
    target_link_libraries(rotary_attention_program_headers PRIVATE rotary_attention)
    target_precompile_headers(rotary_attention_program_headers PRIVATE
      <torch/torch.h> <rotary_attention/rotary_attention.h>)
  endif()
  target_precompile_headers(${target} REUSE_FROM rotary_attention_program_headers)
endfunction()
