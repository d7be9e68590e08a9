# qkv_add_library(<name> <folder> <f32|f64> [<dependency name> ...])
#
# Builds every .cpp in <folder>/ into `qkv_<name>` (float32) or `qkv_<name>_f64` (float64),
# linking the same precision of each dependency. The precision is a PUBLIC definition so that
# everything linking the library sees the same `qkv::real` as the library was compiled with.
set(QKV_SUFFIX_f32 "")
set(QKV_SUFFIX_f64 "_f64")

function(qkv_add_library name folder precision)
  set(target qkv_${name}${QKV_SUFFIX_${precision}})
  file(GLOB sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${folder}/*.cpp)
  if(sources)
    add_library(${target} STATIC ${sources})
    # Build-only: warnings and sanitizer flags are not part of the installed package.
    target_link_libraries(${target} PRIVATE $<BUILD_INTERFACE:qkv_warnings>)
    qkv_precompile_headers(${target})
    # One translation unit per batch of sources: xtensor's templates are instantiated once per
    # batch instead of once per file (see QKV_UNITY_BUILD in CMakeLists.txt).
    if(QKV_UNITY_BUILD)
      set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 16)
    endif()
    set(scope PUBLIC)
  else()  # a folder with headers only (so far)
    add_library(${target} INTERFACE)
    set(scope INTERFACE)
  endif()
  # Sources include "lib/numerics/tensor.hpp"; installed, the headers are in include/qkv/lib/...
  target_include_directories(${target} ${scope} $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
                                                 $<INSTALL_INTERFACE:include/qkv>)
  # Installed and in-tree alike, users name it qkv::<name> (qkv::train, qkv::layers_f64, ...).
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${name}${QKV_SUFFIX_${precision}})
  add_library(qkv::${name}${QKV_SUFFIX_${precision}} ALIAS ${target})
  if(precision STREQUAL "f64")
    target_compile_definitions(${target} ${scope} QKV_DOUBLE=1)
  endif()
  foreach(dependency IN LISTS ARGN)
    target_link_libraries(${target} ${scope} qkv_${dependency}${QKV_SUFFIX_${precision}})
  endforeach()
endfunction()

# xtensor's headers dominate compile time; parsing them once per target halves a clean build.
function(qkv_precompile_headers target)
  target_precompile_headers(${target} PRIVATE
    <xtensor/xarray.hpp> <functional> <map> <memory> <span> <string> <vector>)
endfunction()
