#include "comm/rendezvous.h"
#include "comm/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace allround::comm {
namespace {

using ::testing::HasSubstr;

// A port per test from the process id, so parallel ctest runs do not collide.
int Port(int offset) { return 20000 + (::getpid() * 7 + offset) % 20000; }

TEST(Rendezvous, EveryRankGetsRankZerosBlob) {
  const int world = 5;
  const int port = Port(1);
  std::vector<absl::StatusOr<std::string>> got(world, absl::UnknownError("not run"));
  std::vector<std::thread> ranks;
  // Non-zero ranks start first: they must retry until rank 0 listens.
  for (int r = world - 1; r >= 0; --r) {
    ranks.emplace_back([&, r] {
      if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      RendezvousConfig c{r, world, "127.0.0.1", port, std::chrono::seconds(20)};
      got[r] = BroadcastBlob(c, r == 0 ? std::string("nccl-unique-id\0bytes", 20) : "");
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(got[r].ok()) << "rank " << r << ": " << got[r].status();
    EXPECT_EQ(*got[r], std::string("nccl-unique-id\0bytes", 20)) << "rank " << r;
  }
}

TEST(Rendezvous, MissingRanksAreNamedAfterTheTimeout) {
  const int port = Port(2);
  absl::StatusOr<std::string> rank0 = absl::UnknownError("not run"), rank2 = absl::UnknownError("not run");
  std::thread t0([&] { rank0 = BroadcastBlob({0, 4, "127.0.0.1", port, std::chrono::milliseconds(1500)}, "x"); });
  std::thread t2([&] { rank2 = BroadcastBlob({2, 4, "127.0.0.1", port, std::chrono::milliseconds(1500)}, ""); });
  t0.join();
  t2.join();
  EXPECT_EQ(rank0.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(rank0.status().message()), HasSubstr("rank(s) 1, 3 did not join"));
}

TEST(Rendezvous, UnreachableMasterTimesOutNamingIt) {
  auto r = BroadcastBlob({1, 2, "127.0.0.1", Port(3), std::chrono::milliseconds(300)}, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("could not reach rank 0 at 127.0.0.1"));
}

TEST(Rendezvous, EnvironmentErrorsNameTheVariable) {
  ::unsetenv("RANK");
  EXPECT_THAT(std::string(RendezvousFromEnvironment().status().message()), HasSubstr("RANK"));
  ::setenv("RANK", "3", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("MASTER_PORT", "1234", 1);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  EXPECT_THAT(std::string(RendezvousFromEnvironment().status().message()), HasSubstr("RANK=3 does not fit WORLD_SIZE=2"));
  ::setenv("RANK", "1", 1);
  auto c = RendezvousFromEnvironment();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->master_port, 1234);
}

// What each rank of an NCCL group is told before any exchange, from what the launcher says.
// (On an H200, two ranks on its one GPU were refused by NCCL as "invalid usage", rank 0 only after
// waiting out the timeout for rank 1, which had already left.)
TEST(Rendezvous, GpuOfRankRefusesMoreRanksThanTheMachineHasGpus) {
  const char* vars[] = {"LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"};
  for (const char* v : vars) ::unsetenv(v);
  EXPECT_EQ(GpuOfRank(0, 1, 0).status().code(), absl::StatusCode::kUnavailable);  // no GPU at all
  // RANK alone: one rank per machine, each takes its rank modulo the devices.
  EXPECT_EQ(*GpuOfRank(5, 8, 1), 0);
  EXPECT_EQ(*GpuOfRank(5, 8, 4), 1);
  // torchrun: two ranks on a one-GPU machine; rank 0 is refused too, by the count.
  ::setenv("LOCAL_RANK", "0", 1);
  ::setenv("LOCAL_WORLD_SIZE", "2", 1);
  auto r0 = GpuOfRank(0, 2, 1);
  EXPECT_EQ(r0.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r0.status().message()),
              HasSubstr("rank 0: this machine runs 2 ranks (LOCAL_WORLD_SIZE) and has 1 CUDA device(s): NCCL needs "
                        "a GPU of its own for each rank, so start at most 1 rank(s) per machine"));
  // The local rank alone: the rank past the devices is refused; the one that fits is not.
  ::unsetenv("LOCAL_WORLD_SIZE");
  EXPECT_EQ(*GpuOfRank(0, 2, 1), 0);
  ::setenv("LOCAL_RANK", "1", 1);
  EXPECT_THAT(std::string(GpuOfRank(1, 2, 1).status().message()),
              HasSubstr("rank 1 is local rank 1 (LOCAL_RANK) on a machine with 1 CUDA device(s)"));
  EXPECT_EQ(*GpuOfRank(3, 4, 2), 1);  // local rank 1 of 2 GPUs
  // Open MPI's variables, and a group of one is never refused.
  ::unsetenv("LOCAL_RANK");
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "3", 1);
  EXPECT_THAT(std::string(GpuOfRank(2, 3, 2).status().message()), HasSubstr("(OMPI_COMM_WORLD_LOCAL_SIZE)"));
  EXPECT_EQ(*GpuOfRank(2, 3, 4), 2);
  EXPECT_EQ(*GpuOfRank(0, 1, 1), 0);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "x1", 1);  // a value that is not a number is named
  EXPECT_THAT(std::string(GpuOfRank(0, 3, 4).status().message()),
              HasSubstr("OMPI_COMM_WORLD_LOCAL_RANK='x1' is not a number"));
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "-1", 1);
  EXPECT_THAT(std::string(GpuOfRank(0, 3, 4).status().message()), HasSubstr("OMPI_COMM_WORLD_LOCAL_RANK=-1 is below 0"));
  for (const char* v : vars) ::unsetenv(v);
}

}  // namespace
}  // namespace allround::comm
