# Detects optional parts and sets ALLROUND_HAVE_<PART>. A part whose dependencies are missing is
# switched off with a message; the code never changes for it.

set(ALLROUND_HAVE_CUDA OFF)
if(ALLROUND_WITH_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER AND TORCH_CUDA_LIBRARIES)
    set(ALLROUND_HAVE_CUDA ON)
  elseif(CMAKE_CUDA_COMPILER)
    message(STATUS "allround: CUDA toolkit found, but LibTorch is CPU-only: GPU backend off "
                   "(point CMAKE_PREFIX_PATH at a CUDA LibTorch to turn it on)")
  else()
    message(STATUS "allround: no CUDA toolkit: GPU backend off")
  endif()
endif()

# Open MPI: the CPU collectives backend (comm/mpi) and the mpirun tests.
set(ALLROUND_HAVE_MPI OFF)
option(ALLROUND_WITH_MPI "Build the MPI backend when an MPI library is found" ON)
if(ALLROUND_WITH_MPI)
  find_package(MPI COMPONENTS C)
  if(MPI_C_FOUND)
    set(ALLROUND_HAVE_MPI ON)
  else()
    message(STATUS "allround: no MPI library: MPI backend off (install libopenmpi-dev)")
  endif()
endif()

# NCCL: the CUDA collectives backend (comm/nccl). It needs only the CUDA runtime and NCCL (not a
# CUDA LibTorch) to compile and link; at run time it also needs a GPU and a CUDA LibTorch.
set(ALLROUND_HAVE_NCCL OFF)
option(ALLROUND_WITH_NCCL "Build the NCCL backend when the CUDA toolkit and NCCL are found" ON)
if(ALLROUND_WITH_NCCL)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{NCCL_HOME}/include)
    # PyPI's nvidia-nccl wheels hold only libnccl.so.2, with no libnccl.so link.
    find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2
                 HINTS ${CUDAToolkit_LIBRARY_DIR} $ENV{NCCL_HOME}/lib)
  endif()
  if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(ALLROUND_HAVE_NCCL ON)
  else()
    message(STATUS "allround: no CUDA toolkit with NCCL: NCCL backend off")
  endif()
endif()

# libsodium: the primitives of secure aggregation (privacy/: SecAgg+ key agreement, masks and
# encrypted shares).
set(ALLROUND_HAVE_SODIUM OFF)
option(ALLROUND_WITH_SODIUM "Build secure aggregation when libsodium is found" ON)
if(ALLROUND_WITH_SODIUM)
  find_path(SODIUM_INCLUDE_DIR sodium.h)
  find_library(SODIUM_LIBRARY sodium)
  if(SODIUM_INCLUDE_DIR AND SODIUM_LIBRARY)
    set(ALLROUND_HAVE_SODIUM ON)
  else()
    message(STATUS "allround: no libsodium: secure aggregation off (install libsodium-dev)")
  endif()
endif()

# TensorBoard's message definitions (observe/): the Event and Summary messages of its event files,
# taken from the `tensorboard` Python package that deploy/setup.sh installs into the venv, and
# compiled by protoc. Without the package, runs write no event files (and say so).
# The venv's python (deploy/setup.sh) also runs the tests that read what allround writes with its
# readers' own Python packages.
if(DEFINED ENV{ALLROUND_VENV})
  set(ALLROUND_VENV_PYTHON "$ENV{ALLROUND_VENV}/bin/python3")
else()
  set(ALLROUND_VENV_PYTHON "/opt/allround-venv/bin/python3")
endif()
set(ALLROUND_HAVE_TENSORBOARD OFF)
option(ALLROUND_WITH_TENSORBOARD "Write TensorBoard event files when the tensorboard package is found" ON)
if(ALLROUND_WITH_TENSORBOARD)
  set(ALLROUND_TB_DESC_DIR ${PROJECT_BINARY_DIR}/observe/descriptors)
  if(EXISTS ${ALLROUND_VENV_PYTHON})
    execute_process(COMMAND ${ALLROUND_VENV_PYTHON} ${PROJECT_SOURCE_DIR}/observe/tensorboard_descriptors.py
                            ${ALLROUND_TB_DESC_DIR}
                    RESULT_VARIABLE tb_rc ERROR_VARIABLE tb_err OUTPUT_QUIET)
    if(tb_rc EQUAL 0)
      set(ALLROUND_HAVE_TENSORBOARD ON)
    else()
      string(STRIP "${tb_err}" tb_err)
      message(STATUS "allround: ${tb_err}: TensorBoard event files off (deploy/setup.sh installs it)")
    endif()
  else()
    message(STATUS "allround: no ${ALLROUND_VENV_PYTHON}: TensorBoard event files off (run deploy/setup.sh)")
  endif()
endif()

# Prometheus metrics and the status page of the coordinator (--metrics-listen): prometheus-cpp's
# registry and text format, served by cpp-httplib (Debian: prometheus-cpp-dev, libcpp-httplib-dev).
set(ALLROUND_HAVE_PROMETHEUS OFF)
option(ALLROUND_WITH_PROMETHEUS "Serve Prometheus metrics and a status page when prometheus-cpp and cpp-httplib are found" ON)
if(ALLROUND_WITH_PROMETHEUS)
  find_package(prometheus-cpp CONFIG QUIET)
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
  endif()
  if(TARGET prometheus-cpp::core AND HTTPLIB_FOUND)
    set(ALLROUND_HAVE_PROMETHEUS ON)
  else()
    message(STATUS "allround: no prometheus-cpp or cpp-httplib: metrics and status page off "
                   "(install prometheus-cpp-dev libcpp-httplib-dev)")
  endif()
endif()
