// The one log format: program, rank (of several), site, level; --log-level drops what is below it.

#include "common/log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace allround::log {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

TEST(Log, OneFormatWithProgramRankSiteAndLevel) {
  ASSERT_TRUE(Init("allround-test", "info").ok());
  ::testing::internal::CaptureStderr();
  Info("plain {}", 1);
  SetRank(1, 4);
  {
    SiteScope scope("hospital-a");
    Warning("round {}: {}", 3, "late");
    std::thread([] { Info("from another thread"); }).join();  // the site is the thread's
  }
  SetRank(0, 1);
  Error("done");
  const std::string out = ::testing::internal::GetCapturedStderr();
  const std::string time = "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{3}";
  EXPECT_THAT(out, MatchesRegex(time + " allround-test: info: plain 1\n" +
                                time + " allround-test rank 1 site hospital-a: warning: round 3: late\n" +
                                time + " allround-test rank 1: info: from another thread\n" +
                                time + " allround-test: error: done\n"));
}

TEST(Log, TheLevelDropsLessSevereLinesAndAnUnknownOneIsRefused) {
  ASSERT_TRUE(Init("allround-test", "warning").ok());
  ::testing::internal::CaptureStderr();
  Debug("d");
  Info("i");
  Warning("w");
  const std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(out, HasSubstr("warning: w"));
  EXPECT_THAT(out, Not(HasSubstr("info: i")));
  absl::Status bad = SetLevel("verbose");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("unknown level 'verbose' (one of: debug, info, warning, error, off)"));
  ASSERT_TRUE(SetLevel("debug").ok());
  ::testing::internal::CaptureStderr();
  Debug("now {}", "shown");
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("debug: now shown"));
  ASSERT_TRUE(SetLevel("info").ok());
}

}  // namespace
}  // namespace allround::log
