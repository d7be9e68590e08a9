# `cmake --install` puts the headers in include/qkv/<folder>/, the static libraries in lib/ and
# a CMake package in lib/cmake/qkv, so an outside project writes
#
#   find_package(qkv REQUIRED)
#   target_link_libraries(app PRIVATE qkv::qkv)      # float32; qkv::qkv_f64 for float64
#
# and includes "autograd/ops.hpp" etc. as qkv's own sources do. examples/custom_layer is such a
# project; scripts/test.sh installs qkv to a temporary prefix and builds it.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(QKV_INSTALL_TARGETS)
foreach(precision f32 f64)
  foreach(name ${QKV_LIBRARIES} "")
    if(name STREQUAL "")
      list(APPEND QKV_INSTALL_TARGETS qkv${QKV_SUFFIX_${precision}})
    else()
      list(APPEND QKV_INSTALL_TARGETS qkv_${name}${QKV_SUFFIX_${precision}})
    endif()
  endforeach()
endforeach()

install(TARGETS ${QKV_INSTALL_TARGETS} EXPORT qkvTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/qkv)
install(DIRECTORY lib autograd layers optim models train study DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/qkv
  FILES_MATCHING PATTERN "*.hpp")

set(QKV_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/qkv)
install(EXPORT qkvTargets NAMESPACE qkv:: DESTINATION ${QKV_CMAKE_DIR})
configure_package_config_file(cmake/qkvConfig.cmake.in ${PROJECT_BINARY_DIR}/qkvConfig.cmake
  INSTALL_DESTINATION ${QKV_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/qkvConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/qkvConfig.cmake ${PROJECT_BINARY_DIR}/qkvConfigVersion.cmake
  DESTINATION ${QKV_CMAKE_DIR})
