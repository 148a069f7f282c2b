# Torch's headers are most of the time of every C++ file here (a test or
# example file spent about 45 of its 50 s in them): each group of targets
# parses them once, into a precompiled header.
# - the library: ATen, the dispatcher and the public headers (C++ files only:
#   the CUDA file is nvcc's; the per-ISA loops have other flags and lighter
#   includes);
# - the test and example programs: torch/torch.h and the umbrella header,
#   built once by rotary_attention_program_headers (an object library with an
#   empty source, compiled as the programs are) and reused by each program.
# RA_PRECOMPILE_HEADERS=OFF compiles every file from its own includes (what
# checks that each file includes what it uses).
option(RA_PRECOMPILE_HEADERS "Precompile torch's headers for the library, tests and examples" ON)

function(ra_precompile_library_headers)
  if(RA_PRECOMPILE_HEADERS)
    target_precompile_headers(rotary_attention PRIVATE
      "$<$<COMPILE_LANGUAGE:CXX>:<ATen/ATen.h$<ANGLE-R>>"
      "$<$<COMPILE_LANGUAGE:CXX>:<torch/library.h$<ANGLE-R>>"
      "$<$<COMPILE_LANGUAGE:CXX>:<rotary_attention/rotary_attention.h$<ANGLE-R>>")
  endif()
endfunction()

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
