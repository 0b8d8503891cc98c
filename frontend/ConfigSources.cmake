# The config reader's sources (frontend/Config.h's implementation), which need
# LLVM Support only: G3MoEFrontend compiles them, and so can a target that
# reads configs without MLIR (include this file, then use the list).
set(G3MOE_CONFIG_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/Config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/ConfigFields.cpp
  ${CMAKE_CURRENT_LIST_DIR}/ConfigReader.cpp
  ${CMAKE_CURRENT_LIST_DIR}/HFConfig.cpp
  ${CMAKE_CURRENT_LIST_DIR}/ModelResolution.cpp
  ${CMAKE_CURRENT_LIST_DIR}/Overrides.cpp
  ${CMAKE_CURRENT_LIST_DIR}/Presets.cpp
  ${CMAKE_CURRENT_LIST_DIR}/Rope.cpp
  ${CMAKE_CURRENT_LIST_DIR}/StepSize.cpp
  ${CMAKE_CURRENT_LIST_DIR}/TrainingResolution.cpp)
