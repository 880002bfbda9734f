# Issue 29's numbered defects, one gtest each (tests/hardening/defects_test.cc), named
# hardening.DefectN.* in ctest.
add_executable(hardening_defects_test ${CMAKE_CURRENT_SOURCE_DIR}/defects_test.cc)
target_link_libraries(hardening_defects_test PRIVATE allround_runtime allround_storage allround_coordinator_service
                      GTest::gtest GTest::gmock GTest::gtest_main)
allround_use_torch(hardening_defects_test)
gtest_discover_tests(hardening_defects_test TEST_PREFIX "hardening." DISCOVERY_TIMEOUT 60
                     PROPERTIES TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
