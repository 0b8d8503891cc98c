#===- G3MoEMLIR.cmake - find Debian's LLVM/MLIR 22 and set up helpers -----===#
#
# Debian installs LLVM 22 under a versioned prefix that is not on CMake's search
# path, ships `lit` instead of `llvm-lit`, and offers both a shared libMLIR.so and
# static archives. We find the exact version through llvm-config-22 and link the
# shared library everywhere (STYLE.md section 4).
#
#===----------------------------------------------------------------------===#
find_program(LLVM_CONFIG_EXE NAMES llvm-config-22 REQUIRED)
execute_process(COMMAND ${LLVM_CONFIG_EXE} --prefix
                OUTPUT_VARIABLE LLVM22_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE)
find_package(MLIR REQUIRED CONFIG HINTS "${LLVM22_PREFIX}/lib/cmake/mlir" NO_DEFAULT_PATH)
message(STATUS "g3moe: MLIR from ${MLIR_DIR}, LLVM ${LLVM_PACKAGE_VERSION}")

if(NOT LLVM_EXTERNAL_LIT)
  set(LLVM_EXTERNAL_LIT "${LLVM_TOOLS_BINARY_DIR}/lit" CACHE FILEPATH "lit driver")
endif()

# One copy of MLIR per process: every target links libMLIR.so.
set(MLIR_LINK_MLIR_DYLIB ON)

list(APPEND CMAKE_MODULE_PATH "${MLIR_CMAKE_DIR}" "${LLVM_CMAKE_DIR}")
set(LLVM_RUNTIME_OUTPUT_INTDIR ${CMAKE_BINARY_DIR}/bin)
set(LLVM_LIBRARY_OUTPUT_INTDIR ${CMAKE_BINARY_DIR}/lib)
set(MLIR_BINARY_DIR ${CMAKE_BINARY_DIR})
include(TableGen)
include(AddLLVM)
include(AddMLIR)
include(HandleLLVMOptions)

include_directories(SYSTEM ${LLVM_INCLUDE_DIRS} ${MLIR_INCLUDE_DIRS})
link_directories(${LLVM_BUILD_LIBRARY_DIR})
# HandleLLVMOptions already defines _GLIBCXX_USE_CXX11_ABI; defining it twice warns.
string(REPLACE "-D_GLIBCXX_USE_CXX11_ABI=1" "" G3MOE_LLVM_DEFINITIONS "${LLVM_DEFINITIONS}")
separate_arguments(G3MOE_LLVM_DEFINITIONS)
add_definitions(${G3MOE_LLVM_DEFINITIONS})

# Code copied from old examples must not land: deprecated MLIR APIs are errors.
add_compile_options(-Werror=deprecated-declarations)

# add_g3moe_library(name SRCS... [DEPENDS ...] [MLIR_LIBS ...] [LIBS ...])
# A compiler-side library that links MLIR through the shared libMLIR.so.
function(add_g3moe_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPENDS;MLIR_LIBS;LIBS" ${ARGN})
  add_mlir_library(${name} ${ARG_SRCS} DEPENDS ${ARG_DEPENDS} EXCLUDE_FROM_LIBMLIR
                   LINK_LIBS PUBLIC ${ARG_LIBS})
  if(ARG_MLIR_LIBS)
    mlir_target_link_libraries(${name} PUBLIC ${ARG_MLIR_LIBS})
  endif()
endfunction()

# add_g3moe_tool(name SRCS... [LIBS ...])
function(add_g3moe_tool name)
  cmake_parse_arguments(ARG "" "" "SRCS;LIBS;MLIR_LIBS" ${ARGN})
  add_llvm_executable(${name} ${ARG_SRCS})
  llvm_update_compile_flags(${name})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS})
  if(ARG_MLIR_LIBS)
    mlir_target_link_libraries(${name} PRIVATE ${ARG_MLIR_LIBS})
  endif()
endfunction()
