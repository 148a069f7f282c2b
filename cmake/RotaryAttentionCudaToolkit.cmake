# Points torch's CMake at the real CUDA toolkit before find_package(Torch).
# Included by the project's CMakeLists.txt and by the installed package config,
# so an outside project configures with CMAKE_PREFIX_PATH alone.
#
# torch's CMake (FindCUDA) derives the toolkit from the nvcc it finds on PATH.
# Where that nvcc is a wrapper script (as /usr/local/bin/nvcc execs the real
# one), the derived root has no CUDA libraries and configuration fails with
# "Your installed Caffe2 version uses CUDA but I cannot find the CUDA
# libraries". Resolving the real nvcc (symlinks followed; /usr/local/cuda
# preferred) gives the toolkit root. An explicit CUDA_TOOLKIT_ROOT_DIR or
# CUDA_HOME wins.
if(NOT DEFINED CUDA_TOOLKIT_ROOT_DIR AND NOT DEFINED ENV{CUDA_HOME})
  find_program(RA_NVCC nvcc PATHS /usr/local/cuda/bin NO_DEFAULT_PATH)
  find_program(RA_NVCC nvcc)
  if(RA_NVCC)
    get_filename_component(_ra_nvcc "${RA_NVCC}" REALPATH)
    get_filename_component(_ra_cuda_bin "${_ra_nvcc}" DIRECTORY)
    get_filename_component(_ra_cuda_root "${_ra_cuda_bin}" DIRECTORY)
    # A wrapper script resolves to itself: only a directory with the CUDA
    # headers is a toolkit.
    if(EXISTS "${_ra_cuda_root}/include/cuda_runtime_api.h")
      set(CUDA_TOOLKIT_ROOT_DIR "${_ra_cuda_root}")
      if(NOT DEFINED CMAKE_CUDA_COMPILER)
        set(CMAKE_CUDA_COMPILER "${_ra_nvcc}")
      endif()
    endif()
  endif()
endif()
# The CUDA wheel makes find_package(Torch) look for nvcc; naming the
# architectures keeps it from probing for a GPU. 9.0 is Hopper (H100/H200);
# CUDA 13 has no sm < 75.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
