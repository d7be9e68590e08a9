# qkv_add_library(<folder> <f32|f64> [<dependency folder>])
#
# Builds every .cpp in <folder>/ into `qkv_<folder>` (float32) or `qkv_<folder>_f64` (float64).
# The precision is a PUBLIC definition so that everything linking the library sees the same
# `qkv::real` as the library was compiled with.
set(QKV_SUFFIX_f32 "")
set(QKV_SUFFIX_f64 "_f64")

function(qkv_add_library folder precision)
  set(target qkv_${folder}${QKV_SUFFIX_${precision}})
  file(GLOB sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${folder}/*.cpp)
  if(sources)
    add_library(${target} STATIC ${sources})
    # Build-only: warnings and sanitizer flags are not part of the installed package.
    target_link_libraries(${target} PRIVATE $<BUILD_INTERFACE:qkv_warnings>)
    qkv_precompile_headers(${target})
    set(scope PUBLIC)
  else()  # a folder with headers only (so far)
    add_library(${target} INTERFACE)
    set(scope INTERFACE)
  endif()
  # Sources include "lib/tensor.hpp"; installed, the headers are in include/qkv/lib/, etc.
  target_include_directories(${target} ${scope} $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
                                                 $<INSTALL_INTERFACE:include/qkv>)
  if(precision STREQUAL "f64")
    target_compile_definitions(${target} ${scope} QKV_DOUBLE=1)
  endif()
  if(ARGC GREATER 2)
    target_link_libraries(${target} ${scope} qkv_${ARGV2}${QKV_SUFFIX_${precision}})
  endif()
endfunction()

# xtensor's headers dominate compile time; parsing them once per target halves a clean build.
function(qkv_precompile_headers target)
  target_precompile_headers(${target} PRIVATE
    <xtensor/xarray.hpp> <functional> <map> <memory> <span> <string> <vector>)
endfunction()
