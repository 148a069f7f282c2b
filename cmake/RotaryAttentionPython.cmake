# The Python extension module rotary_attention._C: a thin pybind11 layer built
# with torch's bundled pybind11 (torch/include comes first) and libtorch_python.
find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module)
find_library(TORCH_PYTHON_LIBRARY torch_python PATHS "${TORCH_INSTALL_PREFIX}/lib" REQUIRED NO_DEFAULT_PATH)

Python3_add_library(rotary_attention_python MODULE WITH_SOABI python/csrc/bindings.cpp)
set_target_properties(rotary_attention_python PROPERTIES
  OUTPUT_NAME _C
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/python/rotary_attention
  # setup.py copies it next to librotary_attention, in site-packages beside
  # torch ($ORIGIN...); in the build tree the absolute paths serve.
  BUILD_RPATH "$ORIGIN;$ORIGIN/../torch/lib;$<TARGET_FILE_DIR:rotary_attention>;${TORCH_INSTALL_PREFIX}/lib")
target_include_directories(rotary_attention_python BEFORE PRIVATE ${TORCH_INCLUDE_DIRS})
target_link_libraries(rotary_attention_python PRIVATE rotary_attention ${TORCH_PYTHON_LIBRARY})
if(RA_WHISPER_ENABLED)
  target_sources(rotary_attention_python PRIVATE python/csrc/whisper_bindings.cpp)
  target_link_libraries(rotary_attention_python PRIVATE rotary_whisper)
  target_compile_definitions(rotary_attention_python PRIVATE ROTARY_ATTENTION_WITH_WHISPER)
endif()
target_compile_definitions(rotary_attention_python PRIVATE TORCH_EXTENSION_NAME=_C)

# What setup.py packages: the module, the libraries under their sonames, and
# the rotary-whisper command (into the package's bin/).
set(RA_PACKAGE_FILES "$<TARGET_FILE:rotary_attention_python>\n$<TARGET_SONAME_FILE:rotary_attention>\n")
if(RA_WHISPER_ENABLED)
  string(APPEND RA_PACKAGE_FILES
    "$<TARGET_SONAME_FILE:rotary_whisper>\n$<TARGET_FILE:rotary_whisper_command>\n")
endif()
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/python_package_files.txt CONTENT "${RA_PACKAGE_FILES}")
