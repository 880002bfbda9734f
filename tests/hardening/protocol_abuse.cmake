# Protocol abuse (issue 29): a Python gRPC client of our own sends hostile Join, GetTask, Heartbeat,
# FetchModel and SubmitUpdate calls to a real coordinator on loopback and asserts after each class
# that it is alive with bounded memory and threads, and that a real site still completes its rounds.
# Its stubs are generated here from comm/proto/federated.proto with Debian's protoc and
# grpc_python_plugin, the versions Debian's python3-protobuf and python3-grpcio import. Without
# them the test skips (exit 77), saying why.
find_program(ALLROUND_PROTOC protoc)
find_program(ALLROUND_GRPC_PYTHON_PLUGIN grpc_python_plugin)
find_program(ALLROUND_SYSTEM_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT ALLROUND_SYSTEM_PYTHON3)
  find_program(ALLROUND_SYSTEM_PYTHON3 python3)
endif()

set(_protocol_abuse_stubs ${CMAKE_CURRENT_BINARY_DIR}/protocol_abuse_stubs)
set(_protocol_abuse_proto ${PROJECT_SOURCE_DIR}/comm/proto/federated.proto)
if(ALLROUND_PROTOC AND ALLROUND_GRPC_PYTHON_PLUGIN)
  add_custom_command(
    OUTPUT ${_protocol_abuse_stubs}/federated_pb2.py ${_protocol_abuse_stubs}/federated_pb2_grpc.py
    COMMAND ${CMAKE_COMMAND} -E make_directory ${_protocol_abuse_stubs}
    COMMAND ${ALLROUND_PROTOC} -I ${PROJECT_SOURCE_DIR}/comm/proto --python_out=${_protocol_abuse_stubs}
            --plugin=protoc-gen-grpc_python=${ALLROUND_GRPC_PYTHON_PLUGIN} --grpc_python_out=${_protocol_abuse_stubs}
            ${_protocol_abuse_proto}
    DEPENDS ${_protocol_abuse_proto}
    COMMENT "Python gRPC stubs of federated.proto for the protocol-abuse test"
    VERBATIM)
  add_custom_target(protocol_abuse_stubs ALL
                    DEPENDS ${_protocol_abuse_stubs}/federated_pb2.py ${_protocol_abuse_stubs}/federated_pb2_grpc.py)
else()
  message(STATUS "protoc or grpc_python_plugin not found: hardening_protocol_abuse will skip "
                 "(apt-get install protobuf-compiler protobuf-compiler-grpc)")
endif()

if(ALLROUND_SYSTEM_PYTHON3)
  add_test(NAME hardening_protocol_abuse
           COMMAND ${ALLROUND_SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/protocol_abuse_test.py
                   --coordinator $<TARGET_FILE:allround-coordinator> --worker $<TARGET_FILE:allround-worker>
                   --stubs ${_protocol_abuse_stubs})
  set_tests_properties(hardening_protocol_abuse PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 RUN_SERIAL TRUE
                       ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
endif()
