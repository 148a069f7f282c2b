# `cmake --install build --prefix P` installs headers, the library and a CMake
# package: find_package(RotaryAttention) + RotaryAttention::rotary_attention
# (the layers) and RotaryAttention::whisper (the whole fork), and the
# rotary-whisper command.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(RA_INSTALLED_LIBRARIES rotary_attention)
if(RA_WHISPER_ENABLED)
  set_target_properties(rotary_whisper PROPERTIES EXPORT_NAME whisper)
  list(APPEND RA_INSTALLED_LIBRARIES rotary_whisper)
  install(TARGETS rotary_whisper_command RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(TARGETS ${RA_INSTALLED_LIBRARIES} EXPORT RotaryAttentionTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/rotary_attention DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT RotaryAttentionTargets
  NAMESPACE RotaryAttention::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/RotaryAttention)
configure_package_config_file(cmake/RotaryAttentionConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/RotaryAttentionConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/RotaryAttention)
write_basic_package_version_file(
  ${CMAKE_CURRENT_BINARY_DIR}/RotaryAttentionConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/RotaryAttentionConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/RotaryAttentionConfigVersion.cmake
  cmake/RotaryAttentionCudaToolkit.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/RotaryAttention)
