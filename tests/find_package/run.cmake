# ctest driver: install the build, configure/build the outside project against
# the installed package, run its programs (find_package_consumer_runs_a_package
# runs its run_package on an AOTInductor package). The outside project gets
# CMAKE_PREFIX_PATH (the install and torch's cmake_prefix_path) and nothing
# else: no CUDA flags, even on a machine whose nvcc on PATH is a wrapper script.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
# (The environment form of CMAKE_PREFIX_PATH: a list survives it unsplit.)
set(ENV{CMAKE_PREFIX_PATH} "${WORK_DIR}/prefix:${TORCH_PREFIX}")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/find_package" -B "${WORK_DIR}/build" -G "${GENERATOR}"
  "-DEXAMPLES_DIR=${SOURCE_DIR}/examples")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
file(STRINGS "${WORK_DIR}/build/header_programs.txt" programs)
foreach(program IN LISTS programs)
  run("${program}")
endforeach()
