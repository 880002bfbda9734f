#include "comm/rendezvous.h"

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

}  // namespace
}  // namespace allround::comm
