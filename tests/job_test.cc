#include "common/job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

#include "tests/test_util.h"

namespace allround {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(Job, ParsesNestedKeysOnTopOfDefaults) {
  auto job = ParseJobYaml(R"(
name: cnn
seed: 7
model: {name: fedavg_cnn}
optimizer:
  name: adam
  lr: 0.002
train: {epochs: 3, batch_size: 32}
)", "t.yaml");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->name, "cnn");
  EXPECT_EQ(job->seed, 7u);
  EXPECT_EQ(job->model.name, "fedavg_cnn");
  EXPECT_EQ(job->optimizer.name, "adam");
  EXPECT_DOUBLE_EQ(job->optimizer.lr, 0.002);
  EXPECT_EQ(job->train.epochs, 3);
  EXPECT_EQ(job->train.eval_batch_size, Job{}.train.eval_batch_size);  // untouched default
}

TEST(Job, RefusesUnknownKeysNamingThem) {
  auto top = ParseJobYaml("epochs: 3\n", "t.yaml");
  EXPECT_THAT(std::string(top.status().message()), AllOf(HasSubstr("t.yaml"), HasSubstr("unknown job key 'epochs'")));
  auto nested = ParseJobYaml("optimizer: {lrr: 0.1}\n", "t.yaml");
  EXPECT_THAT(std::string(nested.status().message()),
              AllOf(HasSubstr("'optimizer.lrr'"), HasSubstr("optimizer.lr")));  // suggests the section's keys
}

TEST(Job, RefusesBadValuesNamingTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train: {epochs: three}", "'train.epochs'"},
      {"train: {batch_size: 0}", "'train.batch_size'"},
      {"optimizer: {lr: .nan}", "'optimizer.lr'"},
      {"model: {name: vgg}", "'model.name'"},
      {"optimizer: {nesterov: maybe}", "'optimizer.nesterov'"},
      {"model: {hidden: [10, x]}", "'model.hidden'"},
      {"model: {hidden: [10, 0]}", "'model.hidden'"},
      {"model: {heads: 0}", "'model.heads'"},
      {"dino: {knn_features: raw}", "one of: backbone, pixels"},
      {"dino: {head_bn: maybe}", "'dino.head_bn'"},
      {"gan: {init: xavier}", "'gan.init'"},
      {"mlm: {mask_prob: 0.95}", "'mlm.mask_prob'"},
      {"semi: {mu: 0}", "'semi.mu'"},
      {"vae: {latent: 1.5}", "'vae.latent'"},
      {"seed: -1", "'seed'"},
      {"data: {scale: minmax}", "'data.scale'"},
      {"partition: {site_labels: [[0, x]]}", "'partition.site_labels'"},
      {"partition: {site_labels: [[0, 0]]}", "label 0 twice"},
      {"partition: {site_labels: [[-1]]}", "'partition.site_labels'"},
      {"partition: {site_labels: [[1], 2]}", "scalars and lists mixed"},
      {"partition: {site_labels: [[[1]]]}", "a list nested twice"},
      {"[1, 2]", "must be a YAML map"},
      {"a: [", "not valid YAML"},
      {"train: {epochs: 2}\ntrain: {epochs: 3}\n", "job key 'train' is given twice"},
      {"optimizer: {lr: 0.1, momentum: 0.9, lr: 0.2}", "job key 'optimizer.lr' is given twice"},
  };
  for (const auto& [yaml, want] : cases) {
    auto job = ParseJobYaml(yaml, "t.yaml");
    ASSERT_FALSE(job.ok()) << yaml;
    EXPECT_THAT(std::string(job.status().message()), HasSubstr(want)) << yaml;
  }
}

// The keys of models and learning modes are registered beside their code (common/registry.h):
// they parse, print, round-trip and are checked across keys like the Job's own.
TEST(Job, ModelAndModeKeysComeFromTheirRegistrations) {
  auto job = ParseJobYaml("mode: dino\nmodel: {name: vit, dim: 48, heads: 6}\n"
                          "dino: {out_dim: 64, head_bn: no, knn_features: pixels}\n", "t.yaml");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(JobInteger(*job, "model.dim"), 48);
  EXPECT_EQ(JobIntegers(*job, "model.hidden"), (std::vector<int64_t>{200, 200}));  // the mlp's default
  EXPECT_FALSE(JobBool(*job, "dino.head_bn"));
  EXPECT_EQ(JobParam(*job, "dino.knn_features"), "pixels");
  EXPECT_TRUE(ValidateJob(*job).ok());
  auto back = ParseJobYaml(JobToYaml(*job), "roundtrip");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << JobToYaml(*job);
  EXPECT_EQ(JobToYaml(*back), JobToYaml(*job));
  EXPECT_EQ(JobInteger(*back, "dino.out_dim"), 64);

  // Help and the unknown-key suggestions list them with the components that read them.
  bool listed = false;
  for (const auto& [key, help] : JobKeys()) listed |= key == "dino.knn_features" && absl::StrContains(help, "(dino)");
  EXPECT_TRUE(listed);
  EXPECT_THAT(std::string(ParseJobYaml("dino: {outdim: 3}", "t.yaml").status().message()), HasSubstr("dino.out_dim"));

  // Cross-key checks the components registered.
  Job bad = *job;
  ASSERT_TRUE(SetJobKey(bad, "model.heads", "5").ok());
  EXPECT_THAT(std::string(ValidateJob(bad).message()),
              AllOf(HasSubstr("'model.dim'"), HasSubstr("48 is not a multiple of model.heads (5)")));
  Job mlm;
  mlm.mode = "mlm";
  mlm.data.name = "text";
  mlm.data.augment = "none";
  EXPECT_TRUE(ValidateJob(mlm).ok());
  ASSERT_TRUE(SetJobKey(mlm, "mlm.heads", "3").ok());
  EXPECT_THAT(std::string(ValidateJob(mlm).message()), HasSubstr("'mlm.hidden': 128 is not a multiple of mlm.heads (3)"));
  Job text;
  text.data.name = "text";
  text.data.augment = "none";
  EXPECT_THAT(std::string(ValidateJob(text).message()),
              AllOf(HasSubstr("mode 'supervised' does not train on text"), HasSubstr("a text mode (mlm)")));
  text.mode = "mlm";
  text.data.name = "fashion_mnist";
  EXPECT_THAT(std::string(ValidateJob(text).message()), HasSubstr("mode 'mlm' trains on text"));
}

TEST(Job, UnitScaledPixelsAreForTheSupervisedModeOnly) {
  Job job;
  job.data.scale = "unit";
  EXPECT_TRUE(ValidateJob(job).ok());
  job.mode = "gan";  // samples and views are made by undoing the standardization
  EXPECT_THAT(std::string(ValidateJob(job).message()),
              AllOf(HasSubstr("'data.scale'"), HasSubstr("unit is for the supervised mode")));
}

TEST(Job, SiteLabelSetsComeAsNestedListsOrFlagText) {
  auto job = ParseJobYaml("partition: {scheme: labels, sites: 3, labels_per_site: 2,\n"
                          "            site_labels: [[0, 7], [1, 6], [2, 4]]}\n", "t.yaml");
  ASSERT_TRUE(job.ok()) << job.status();
  const std::vector<std::vector<int64_t>> want = {{0, 7}, {1, 6}, {2, 4}};
  EXPECT_EQ(job->partition.site_labels, want);
  EXPECT_TRUE(ValidateJob(*job).ok());
  Job flags = *job;
  flags.partition.site_labels.clear();
  ASSERT_TRUE(ApplyJobFlags(flags, {"--partition.site_labels", "0,7; 1,6 ;2,4"}).ok());
  EXPECT_EQ(flags.partition.site_labels, want);
  auto back = ParseJobYaml(JobToYaml(*job), "roundtrip");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << JobToYaml(*job);
  EXPECT_EQ(back->partition.site_labels, want);
  EXPECT_TRUE(ParseJobYaml(JobToYaml(Job{}), "defaults")->partition.site_labels.empty());

  // The sets must fit the rest of the partition keys.
  Job bad = *job;
  bad.partition.sites = 4;
  EXPECT_THAT(std::string(ValidateJob(bad).message()),
              AllOf(HasSubstr("'partition.site_labels'"), HasSubstr("3 label sets for partition.sites = 4")));
  bad = *job;
  bad.partition.labels_per_site = 3;
  EXPECT_THAT(std::string(ValidateJob(bad).message()), HasSubstr("site 0 has 2 labels"));
  bad = *job;
  bad.partition.scheme = "dirichlet";
  EXPECT_THAT(std::string(ValidateJob(bad).message()), HasSubstr("for the labels scheme"));
}

// The name becomes a directory (runs/<name>) and every checkpoint id's prefix (<name>/<round>), so
// a name that is not one plain path component is refused before any training, not at the first save.
TEST(Job, NameIsOnePlainPathComponent) {
  for (const std::string good : {"simple_cnn", "run-2.b", "A1"}) {
    Job job;
    job.name = good;
    EXPECT_TRUE(ValidateJob(job).ok()) << good << ": " << ValidateJob(job);
  }
  for (const std::string bad : {"", ".", "..", "a/b", "../etc", "with space", "tab\t"}) {
    Job job;
    job.name = bad;
    EXPECT_THAT(std::string(ValidateJob(job).message()),
                AllOf(HasSubstr("job key 'name'"), HasSubstr("names the run directory")))
        << bad;
  }
}

// partition.file and partition.scheme file come together.
TEST(Job, PartitionFileNeedsTheFileScheme) {
  Job job;
  ASSERT_TRUE(ApplyJobFlags(job, {"--partition.scheme", "file", "--partition.file", "/tmp/sites.txt"}).ok());
  EXPECT_TRUE(ValidateJob(job).ok()) << ValidateJob(job);
  Job bad = job;
  bad.partition.file.clear();
  EXPECT_THAT(std::string(ValidateJob(bad).message()), HasSubstr("needs the file of each site's example indices"));
  bad = job;
  bad.partition.scheme = "iid";
  EXPECT_THAT(std::string(ValidateJob(bad).message()),
              AllOf(HasSubstr("'partition.file'"), HasSubstr("for the file scheme")));
}

TEST(Job, FlagsOverrideKeys) {
  Job job;
  ASSERT_TRUE(ApplyJobFlags(job, {"--optimizer.lr=0.5", "--train.epochs", "4", "--model.hidden=8,4"}).ok());
  EXPECT_DOUBLE_EQ(job.optimizer.lr, 0.5);
  EXPECT_EQ(job.train.epochs, 4);
  EXPECT_EQ(JobIntegers(job, "model.hidden"), (std::vector<int64_t>{8, 4}));
  EXPECT_THAT(std::string(ApplyJobFlags(job, {"--optimizer.learning_rate=1"}).message()),
              HasSubstr("--optimizer.learning_rate"));
  EXPECT_THAT(std::string(SetJobKey(job, "train.epochs", "0").message()), HasSubstr("'train.epochs'"));
}

TEST(Job, YamlRoundTripKeepsEveryKey) {
  Job job;
  job.name = "x";
  job.optimizer.lr = 0.123456789;
  EXPECT_TRUE(SetJobKey(job, "model.hidden", "5,6,7").ok());
  job.schedule.name = "cosine";
  job.partition.beta = 0.25;
  auto back = ParseJobYaml(JobToYaml(job), "roundtrip");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << JobToYaml(job);
  EXPECT_EQ(JobToYaml(*back), JobToYaml(job));
  EXPECT_DOUBLE_EQ(back->optimizer.lr, 0.123456789);
  EXPECT_EQ(JobIntegers(*back, "model.hidden"), (std::vector<int64_t>{5, 6, 7}));
  // Each section is written once (data.test_limit joins data.dir's section rather than opening a
  // second data: that YAML readers other than ours would let replace the first).
  std::set<std::string> tops;
  for (absl::string_view line : absl::StrSplit(JobToYaml(job), '\n')) {
    if (line.empty() || line[0] == ' ') continue;
    EXPECT_TRUE(tops.insert(std::string(line.substr(0, line.find(':')))).second) << line;
  }
  EXPECT_TRUE(tops.count("data") && tops.count("train") && tops.count("run_dir"));
}

// Doubles are written in the shortest form that reads back bit for bit: 0.1 stays "0.1" (in
// job.yaml and --help), and 0.1 + 0.2 keeps its last digit.
TEST(Job, DoublesAreWrittenShortestAndExact) {
  Job job;
  job.optimizer.lr = 0.1 + 0.2;
  job.partition.beta = 1e-5;
  job.federated.site_timeout_s = 300;
  job.federated.round_timeout_s = 123456.75;
  const std::string yaml = JobToYaml(job);
  EXPECT_THAT(yaml, HasSubstr("lr: 0.30000000000000004\n"));
  EXPECT_THAT(yaml, HasSubstr("knn_temp: 0.07\n"));
  EXPECT_THAT(yaml, HasSubstr("site_timeout_s: 300\n"));
  EXPECT_THAT(yaml, HasSubstr("round_timeout_s: 123456.75\n"));
  auto back = ParseJobYaml(yaml, "roundtrip");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->optimizer.lr, 0.1 + 0.2);
  EXPECT_EQ(back->partition.beta, 1e-5);
  EXPECT_EQ(back->federated.site_timeout_s, 300);
  EXPECT_EQ(back->federated.round_timeout_s, 123456.75);
  for (const auto& [key, help] : JobKeys()) {
    if (key == "dino.student_temp") {
      EXPECT_THAT(help, HasSubstr("[0.1]"));
    }
  }
}

TEST(Job, MissingFileIsNotFound) {
  auto job = LoadJobFile("/nonexistent/job.yaml");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(job.status().message()), HasSubstr("/nonexistent/job.yaml"));
}

TEST(Job, ShippedJobsParse) {
  for (const std::string name : {"simple_cnn.yaml", "fedavg_cnn.yaml"}) {
    auto job = LoadJobFile(std::string(ALLROUND_SOURCE_DIR) + "/deploy/jobs/" + name);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_TRUE(ValidateJob(*job).ok());
  }
}

}  // namespace
TEST(JobYaml, AMapOrListAsAKeyIsOneClearErrorNotATerminatedProcess) {
  // Found by tests/fuzz/job: yaml-cpp threw on the conversion of a complex key, past every check.
  for (const std::string text : {"? {a: 1}: x\n", "data:\n  ? [1, 2]: x\n", "optimizer:\n  ? dir: y\n  lr: 0.1\n"}) {
    auto job = ParseJobYaml(text, "job.yaml");
    ASSERT_FALSE(job.ok()) << text;
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(std::string(job.status().message()).find("job.yaml"), std::string::npos) << job.status();
  }
}

}  // namespace allround
