# Store damage (issue 29): pristine checkpoint stores (one closed cleanly, one copied while open so
# its write-ahead log holds the last commits), then every file of every kind flipped and truncated
# at many positions, each in a fresh copy; asserts no crash, no silently altered tensor, no file
# deleted by a refused open, and that every intact checkpoint still resumes (repair after a refusal).
add_executable(hardening_store_damage_test ${CMAKE_CURRENT_SOURCE_DIR}/store_damage_test.cc)
target_link_libraries(hardening_store_damage_test PRIVATE allround_storage GTest::gtest GTest::gtest_main)
allround_use_torch(hardening_store_damage_test)
gtest_discover_tests(hardening_store_damage_test TEST_PREFIX "hardening." DISCOVERY_TIMEOUT 60
                     PROPERTIES TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
