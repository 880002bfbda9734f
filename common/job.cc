#include "common/job.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/registry.h"

namespace allround {
namespace {

// One job key: how to set it from text and how to print it.
struct Key {
  std::string name;
  std::string help;
  std::function<absl::Status(Job&, const std::string&)> set;
  std::function<std::string(const Job&)> get;
};

absl::Status BadValue(const std::string& key, const std::string& value, const std::string& want) {
  return absl::InvalidArgumentError(
      absl::StrCat("job key '", key, "': bad value '", value, "' (", want, ")"));
}

absl::StatusOr<double> ParseDouble(const std::string& key, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno != 0 || !std::isfinite(v)) {
    return BadValue(key, s, "a finite number");
  }
  return v;
}

absl::StatusOr<int64_t> ParseInt(const std::string& key, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0) return BadValue(key, s, "an integer");
  return static_cast<int64_t>(v);
}

// A text key; with `allowed` (called at each set), one of the names it gives.
template <typename Field>
Key NameKey(std::string name, std::string help, Field field, std::function<std::vector<std::string>()> allowed) {
  Key k{name, help, nullptr, nullptr};
  k.set = [name, field, allowed](Job& j, const std::string& v) -> absl::Status {
    const std::vector<std::string> names = allowed ? allowed() : std::vector<std::string>{};
    if (!names.empty() && std::find(names.begin(), names.end(), v) == names.end()) {
      return BadValue(name, v, absl::StrCat("one of: ", absl::StrJoin(names, ", ")));
    }
    field(j) = v;
    return absl::OkStatus();
  };
  k.get = [field](const Job& j) { return field(const_cast<Job&>(j)); };
  return k;
}

template <typename Field>
Key StringKey(std::string name, std::string help, Field field, std::vector<std::string> allowed = {}) {
  return NameKey(std::move(name), std::move(help), field, [allowed] { return allowed; });
}

// A component's name: one that some component of `kind` registered (common/registry.h). A program
// that links no component of the kind checks nothing (making the component would fail there).
template <typename Field>
Key ComponentNameKey(std::string name, std::string help, Field field, std::string kind) {
  // Keys() is built on first use, in main(), after every registration ran.
  const std::vector<std::string> names = ComponentNames(kind);
  if (!names.empty()) absl::StrAppend(&help, ": ", absl::StrJoin(names, ", "));
  return NameKey(std::move(name), std::move(help), field, [kind] { return ComponentNames(kind); });
}

template <typename Field>
Key DoubleKey(std::string name, std::string help, Field field, double lo, double hi) {
  Key k{name, help, nullptr, nullptr};
  k.set = [name, field, lo, hi](Job& j, const std::string& v) -> absl::Status {
    auto d = ParseDouble(name, v);
    if (!d.ok()) return d.status();
    if (*d < lo || *d > hi) return BadValue(name, v, absl::StrCat("between ", lo, " and ", hi));
    field(j) = *d;
    return absl::OkStatus();
  };
  k.get = [field](const Job& j) {
    // The shortest text that reads back as the same double: 0.1, not 0.10000000000000001.
    // (%g at rising precision, not std::to_chars: a GPU machine's compiler may predate it.)
    const double v = field(const_cast<Job&>(j));
    char text[32];
    int digits = 1;
    for (; digits < 17; ++digits) {
      std::snprintf(text, sizeof(text), "%.*g", digits, v);
      if (std::strtod(text, nullptr) == v) break;
    }
    // At least the integer part's digits, so 300 is "300", not "3e+02".
    if (std::fabs(v) >= 1) digits = std::max(digits, std::min(17, static_cast<int>(std::log10(std::fabs(v))) + 1));
    std::snprintf(text, sizeof(text), "%.*g", digits, v);
    return std::string(text);
  };
  return k;
}

template <typename T, typename Field>
Key IntKey(std::string name, std::string help, Field field, int64_t lo, int64_t hi) {
  Key k{name, help, nullptr, nullptr};
  k.set = [name, field, lo, hi](Job& j, const std::string& v) -> absl::Status {
    auto i = ParseInt(name, v);
    if (!i.ok()) return i.status();
    if (*i < lo || *i > hi) return BadValue(name, v, absl::StrCat("between ", lo, " and ", hi));
    field(j) = static_cast<T>(*i);
    return absl::OkStatus();
  };
  k.get = [field](const Job& j) { return absl::StrCat(field(const_cast<Job&>(j))); };
  return k;
}

template <typename Field>
Key BoolKey(std::string name, std::string help, Field field) {
  Key k{name, help, nullptr, nullptr};
  k.set = [name, field](Job& j, const std::string& v) -> absl::Status {
    const std::optional<bool> b = ParseBoolText(v);
    if (!b.has_value()) return BadValue(name, v, "true or false");
    field(j) = *b;
    return absl::OkStatus();
  };
  k.get = [field](const Job& j) { return field(const_cast<Job&>(j)) ? "true" : "false"; };
  return k;
}

// A list of lists of labels, written "0,7;1,6" (sites split by ';', a site's labels by ','), or in
// YAML as [[0, 7], [1, 6]]. Labels are >= 0 and distinct within a site; an empty text is no list.
template <typename Field>
Key LabelSetsKey(std::string name, std::string help, Field field) {
  Key k{name, help, nullptr, nullptr};
  k.set = [name, field](Job& j, const std::string& v) -> absl::Status {
    std::vector<std::vector<int64_t>> out;
    if (!absl::StripAsciiWhitespace(v).empty()) {
      for (absl::string_view group : absl::StrSplit(v, ';')) {
        std::vector<int64_t> set;
        for (absl::string_view part : absl::StrSplit(group, ',', absl::SkipWhitespace())) {
          auto i = ParseInt(name, std::string(absl::StripAsciiWhitespace(part)));
          if (!i.ok()) return i.status();
          if (*i < 0) return BadValue(name, v, "labels are >= 0");
          if (std::find(set.begin(), set.end(), *i) != set.end()) {
            return BadValue(name, v, absl::StrCat("label ", *i, " twice in site ", out.size(), "'s set"));
          }
          set.push_back(*i);
        }
        if (set.empty()) return BadValue(name, v, absl::StrCat("site ", out.size(), " has no labels"));
        out.push_back(std::move(set));
      }
    }
    field(j) = std::move(out);
    return absl::OkStatus();
  };
  k.get = [field](const Job& j) {
    std::vector<std::string> groups;
    for (const auto& set : field(const_cast<Job&>(j))) groups.push_back(absl::StrJoin(set, ","));
    return absl::StrJoin(groups, ";");
  };
  return k;
}

constexpr int64_t kBig = int64_t{1} << 40;

const std::vector<Key>& Keys() {
  static const std::vector<Key>* keys = new std::vector<Key>{
      StringKey("name", "the job's name, used in the run directory", [](Job& j) -> auto& { return j.name; }),
      IntKey<uint64_t>("seed", "the job seed; every other seed derives from it",
                       [](Job& j) -> auto& { return j.seed; }, 0, kBig),
      IntKey<int64_t>("threads", "intra-op threads per process, LibTorch's and OpenBLAS's (0: their defaults)",
                      [](Job& j) -> auto& { return j.threads; }, 0, 1024),
      StringKey("device", "where to train: cpu, or cuda (one GPU per rank, NCCL between them)",
                [](Job& j) -> auto& { return j.device; }, {"cpu", "cuda"}),
      BoolKey("deterministic",
              "cuda: deterministic kernels (cuDNN, cuBLAS, atomics-free ops), so that a rerun or a resume "
              "matches, at some speed; false lets cuDNN pick the fastest and runs differ. CPU runs are "
              "deterministic either way",
              [](Job& j) -> auto& { return j.deterministic; }),
      ComponentNameKey("mode", "learning mode", [](Job& j) -> auto& { return j.mode; }, "mode"),
      ComponentNameKey("loss", "loss function", [](Job& j) -> auto& { return j.loss; }, "loss"),
      ComponentNameKey("model.name", "model architecture", [](Job& j) -> auto& { return j.model.name; }, "model"),
      StringKey("model.init", "initial weights from a safetensors file (fine-tuning)",
                [](Job& j) -> auto& { return j.model.init; }),
      StringKey("data.name", "dataset: fashion_mnist, or text (plain-text files under data.dir, e.g. "
                "/usr/share/games/fortunes)", [](Job& j) -> auto& { return j.data.name; }, {"fashion_mnist", "text"}),
      StringKey("data.dir", "directory with the IDX files (.gz or plain)",
                [](Job& j) -> auto& { return j.data.dir; }),
      StringKey("data.augment", "training augmentation", [](Job& j) -> auto& { return j.data.augment; },
                {"none", "flip", "crop", "flip_crop"}),
      StringKey("data.scale", "image pixels: standardize (mean 0, std 1 over the training set) or unit ([0, 1], "
                "as torchvision's ToTensor gives them; supervised mode)", [](Job& j) -> auto& { return j.data.scale; },
                {"standardize", "unit"}),
      IntKey<int64_t>("data.train_limit", "use the first N training examples (0: all)",
                      [](Job& j) -> auto& { return j.data.train_limit; }, 0, kBig),
      IntKey<int64_t>("data.labels_per_class",
                      "keep the labels of N training images per class (0: all); semi-supervised modes use "
                      "every training image unlabelled",
                      [](Job& j) -> auto& { return j.data.labels_per_class; }, 0, kBig),
      IntKey<int64_t>("train.eval_every", "evaluate on the test set after every K-th epoch (and the last)",
                      [](Job& j) -> auto& { return j.train.eval_every; }, 1, kBig),
      IntKey<int64_t>("text.vocab_size", "text: BPE vocabulary size", [](Job& j) -> auto& { return j.text.vocab_size; },
                      260, 1 << 20),
      IntKey<int64_t>("text.seq_len", "text: tokens per sequence", [](Job& j) -> auto& { return j.text.seq_len; }, 4,
                      4096),
      DoubleKey("text.test_fraction", "text: documents held out", [](Job& j) -> auto& { return j.text.test_fraction; },
                0.0, 0.9),
      IntKey<int64_t>("data.test_limit", "evaluate on the first N test examples (0: all)",
                      [](Job& j) -> auto& { return j.data.test_limit; }, 0, kBig),
      StringKey("optimizer.name", "optimizer", [](Job& j) -> auto& { return j.optimizer.name; },
                {"sgd", "adam", "adamw"}),
      DoubleKey("optimizer.lr", "base learning rate", [](Job& j) -> auto& { return j.optimizer.lr; }, 0, 1e6),
      DoubleKey("optimizer.momentum", "sgd momentum", [](Job& j) -> auto& { return j.optimizer.momentum; }, 0, 1),
      BoolKey("optimizer.nesterov", "sgd Nesterov momentum", [](Job& j) -> auto& { return j.optimizer.nesterov; }),
      DoubleKey("optimizer.weight_decay", "L2 penalty (decoupled for adamw)",
                [](Job& j) -> auto& { return j.optimizer.weight_decay; }, 0, 1e3),
      DoubleKey("optimizer.beta1", "adam beta1", [](Job& j) -> auto& { return j.optimizer.beta1; }, 0, 1),
      DoubleKey("optimizer.beta2", "adam beta2", [](Job& j) -> auto& { return j.optimizer.beta2; }, 0, 1),
      DoubleKey("optimizer.eps", "adam epsilon", [](Job& j) -> auto& { return j.optimizer.eps; }, 0, 1),
      StringKey("schedule.name", "learning-rate schedule", [](Job& j) -> auto& { return j.schedule.name; },
                {"constant", "step", "cosine"}),
      IntKey<int64_t>("schedule.warmup_steps", "linear warmup steps",
                      [](Job& j) -> auto& { return j.schedule.warmup_steps; }, 0, kBig),
      DoubleKey("schedule.warmup_epochs", "linear warmup in epochs (alternative to warmup_steps)",
                [](Job& j) -> auto& { return j.schedule.warmup_epochs; }, 0, 1e6),
      IntKey<int64_t>("schedule.step_epochs", "step: epochs between decays",
                      [](Job& j) -> auto& { return j.schedule.step_epochs; }, 1, kBig),
      DoubleKey("schedule.gamma", "step: decay factor", [](Job& j) -> auto& { return j.schedule.gamma; }, 0, 1),
      DoubleKey("schedule.min_lr", "cosine: final learning rate",
                [](Job& j) -> auto& { return j.schedule.min_lr; }, 0, 1e6),
      IntKey<int64_t>("train.epochs", "epochs", [](Job& j) -> auto& { return j.train.epochs; }, 1, kBig),
      IntKey<int64_t>("train.batch_size", "examples per step (per rank)",
                      [](Job& j) -> auto& { return j.train.batch_size; }, 1, kBig),
      IntKey<int64_t>("train.eval_batch_size", "examples per evaluation batch",
                      [](Job& j) -> auto& { return j.train.eval_batch_size; }, 1, kBig),
      IntKey<int64_t>("train.max_steps", "stop after this many steps (0: no limit)",
                      [](Job& j) -> auto& { return j.train.max_steps; }, 0, kBig),
      DoubleKey("train.progress_every_s", "seconds between progress lines",
                [](Job& j) -> auto& { return j.train.progress_every_s; }, 0, 1e6),
      StringKey("partition.scheme", "how data is split among sites",
                [](Job& j) -> auto& { return j.partition.scheme; }, {"iid", "dirichlet", "labels", "file"}),
      IntKey<int64_t>("partition.sites", "number of sites", [](Job& j) -> auto& { return j.partition.sites; }, 1, 1 << 20),
      DoubleKey("partition.beta", "dirichlet concentration", [](Job& j) -> auto& { return j.partition.beta; }, 1e-6, 1e6),
      IntKey<int64_t>("partition.labels_per_site", "labels: classes per site (#C=k)",
                      [](Job& j) -> auto& { return j.partition.labels_per_site; }, 1, 1 << 20),
      LabelSetsKey("partition.site_labels",
                   "labels: each site's labels, given instead of drawn, e.g. 0,7;1,6 (empty: drawn)",
                   [](Job& j) -> auto& { return j.partition.site_labels; }),
      StringKey("partition.file", "file: each site's training example indices, one line per site",
                [](Job& j) -> auto& { return j.partition.file; }),
      IntKey<int64_t>("partition.min_per_site", "dirichlet: minimum examples per site",
                      [](Job& j) -> auto& { return j.partition.min_per_site; }, 0, kBig),
      ComponentNameKey("comm.backend", "collectives backend", [](Job& j) -> auto& { return j.comm.backend; },
                       "backend"),
      DoubleKey("comm.timeout_s", "seconds before a collective fails", [](Job& j) -> auto& { return j.comm.timeout_s; },
                0.001, 1e6),
      DoubleKey("comm.bucket_mb", "gradient bucket cap (MiB)", [](Job& j) -> auto& { return j.comm.bucket_mb; }, 1e-6, 1e5),
      DoubleKey("comm.first_bucket_mb", "first gradient bucket cap (MiB)",
                [](Job& j) -> auto& { return j.comm.first_bucket_mb; }, 1e-6, 1e5),
      BoolKey("checkpoint.enabled", "write checkpoints", [](Job& j) -> auto& { return j.checkpoint.enabled; }),
      StringKey("checkpoint.dir", "checkpoint store directory (empty: <run_dir>/checkpoints)",
                [](Job& j) -> auto& { return j.checkpoint.dir; }),
      IntKey<int64_t>("checkpoint.every_rounds", "checkpoint after every K-th round (0: never)",
                      [](Job& j) -> auto& { return j.checkpoint.every_rounds; }, 0, kBig),
      IntKey<int64_t>("checkpoint.every_steps", "checkpoint after every K-th step (0: never)",
                      [](Job& j) -> auto& { return j.checkpoint.every_steps; }, 0, kBig),
      IntKey<int64_t>("checkpoint.keep_last", "keep the newest N checkpoints",
                      [](Job& j) -> auto& { return j.checkpoint.keep_last; }, 1, kBig),
      IntKey<int64_t>("checkpoint.keep_every", "also keep every M-th checkpoint (0: none)",
                      [](Job& j) -> auto& { return j.checkpoint.keep_every; }, 0, kBig),
      IntKey<int64_t>("federated.rounds", "federated rounds", [](Job& j) -> auto& { return j.federated.rounds; }, 1, kBig),
      DoubleKey("federated.fraction", "fraction of alive sites sampled per round",
                [](Job& j) -> auto& { return j.federated.fraction; }, 0, 1),
      IntKey<int64_t>("federated.min_sites", "updates a round needs to close",
                      [](Job& j) -> auto& { return j.federated.min_sites; }, 1, kBig),
      IntKey<int64_t>("federated.min_available", "alive sites before a round starts",
                      [](Job& j) -> auto& { return j.federated.min_available; }, 1, kBig),
      DoubleKey("federated.round_timeout_s", "a round's deadline (seconds)",
                [](Job& j) -> auto& { return j.federated.round_timeout_s; }, 0.001, 1e7),
      DoubleKey("federated.site_timeout_s", "silence after which a site is not alive (seconds)",
                [](Job& j) -> auto& { return j.federated.site_timeout_s; }, 0.001, 1e7),
      IntKey<int64_t>("federated.local_epochs", "a site's local epochs per round",
                      [](Job& j) -> auto& { return j.federated.local_epochs; }, 1, kBig),
      DoubleKey("federated.site_eval_fraction",
                "of a site's examples held out as its own test split for federated evaluation (0: none)",
                [](Job& j) -> auto& { return j.federated.site_eval_fraction; }, 0.0, 0.9),
      IntKey<int64_t>("federated.max_streams", "model and update streams open at once at the coordinator",
                      [](Job& j) -> auto& { return j.federated.max_streams; }, 1, 1 << 16),
      DoubleKey("federated.first_message_s", "seconds an update stream may take to send its first message",
                [](Job& j) -> auto& { return j.federated.first_message_s; }, 0.001, 1e6),
      DoubleKey("federated.stream_idle_s", "seconds a model or update stream may stay silent",
                [](Job& j) -> auto& { return j.federated.stream_idle_s; }, 0.001, 1e6),
      IntKey<int64_t>("federated.max_site_examples", "the most training examples a site may declare at Join",
                      [](Job& j) -> auto& { return j.federated.max_site_examples; }, 1, int64_t{1} << 50),
      IntKey<int64_t>("federated.max_echo_chars", "characters of a request's strings quoted back in an error",
                      [](Job& j) -> auto& { return j.federated.max_echo_chars; }, 8, 1 << 20),
      ComponentNameKey("strategy.name", "aggregation strategy", [](Job& j) -> auto& { return j.strategy.name; },
                       "strategy"),
      BoolKey("tensorboard.enabled", "write TensorBoard event files into the run directory",
              [](Job& j) -> auto& { return j.tensorboard.enabled; }),
      BoolKey("tensorboard.histograms", "TensorBoard: histograms of the weights (and update norms) each round",
              [](Job& j) -> auto& { return j.tensorboard.histograms; }),
      StringKey("run_dir", "where metrics and outputs go ({name}: the job's name)",
                [](Job& j) -> auto& { return j.run_dir; }),
  };
  return *keys;
}

const Key* FindKey(const std::string& name) {
  for (const Key& k : Keys()) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

absl::Status UnknownKey(const std::string& key, const std::string& origin) {
  std::vector<std::string> near;
  const std::string prefix = key.substr(0, key.find('.') + 1);
  const auto is_near = [&](const std::string& name) {
    return key.find('.') != std::string::npos ? absl::StartsWith(name, prefix) : name.find('.') == std::string::npos;
  };
  for (const Key& k : Keys()) {
    if (is_near(k.name)) near.push_back(k.name);
  }
  for (const ComponentKey* k : ComponentKeys()) {
    if (is_near(k->key)) near.push_back(k->key);
  }
  return absl::InvalidArgumentError(absl::StrCat(origin, ": unknown job key '", key,
                                                 "' (known: ", absl::StrJoin(near, ", "), ")"));
}

// Sets a job key: one of the Job's own, or one a component registered (into Job::params).
// NotFound for neither.
absl::Status SetKey(Job& job, const std::string& name, const std::string& value) {
  if (const Key* key = FindKey(name)) return key->set(job, value);
  const ComponentKey* key = FindComponentKey(name);
  if (key == nullptr) return absl::NotFoundError(name);
  if (key->check) {
    if (auto s = key->check(value); !s.ok()) return s;
  }
  job.params[name] = value;
  return absl::OkStatus();
}

// Walks a YAML map, setting each leaf by its dotted path.
absl::Status ApplyYamlNode(Job& job, const YAML::Node& node, const std::string& path,
                           const std::string& origin) {
  if (node.IsMap()) {
    std::set<std::string> seen;  // YAML keys are unique within a map; yaml-cpp keeps both, the last winning
    for (const auto& kv : node) {
      if (!kv.first.IsScalar()) {  // "? {a: 1}: x": a map or list as a key
        return absl::InvalidArgumentError(absl::StrCat(origin, ": a job key under '", path.empty() ? "(top)" : path,
                                                       "' is not a plain name (line ", kv.first.Mark().line + 1, ")"));
      }
      const std::string child = path.empty() ? kv.first.as<std::string>()
                                             : absl::StrCat(path, ".", kv.first.as<std::string>());
      if (!seen.insert(kv.first.as<std::string>()).second) {
        return absl::InvalidArgumentError(absl::StrCat(origin, ": job key '", child, "' is given twice"));
      }
      absl::Status s = ApplyYamlNode(job, kv.second, child, origin);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (FindKey(path) == nullptr && FindComponentKey(path) == nullptr) return UnknownKey(path, origin);
  std::string value;
  if (node.IsSequence()) {
    // A list of scalars becomes "a,b"; a list of lists "a,b;c,d" (partition.site_labels).
    std::vector<std::string> items;
    bool scalars = false, lists = false;
    for (const auto& item : node) {
      if (item.IsScalar()) {
        scalars = true;
        items.push_back(item.Scalar());
        continue;
      }
      if (!item.IsSequence()) return BadValue(path, "(a map in a list)", "a list of scalars or of lists");
      lists = true;
      std::vector<std::string> inner;
      for (const auto& x : item) {
        if (!x.IsScalar()) return BadValue(path, "(a list nested twice)", "a list of scalars or of lists");
        inner.push_back(x.Scalar());
      }
      items.push_back(absl::StrJoin(inner, ","));
    }
    if (scalars && lists) return BadValue(path, "(scalars and lists mixed)", "a list of scalars or of lists");
    value = absl::StrJoin(items, lists ? ";" : ",");
  } else if (node.IsScalar()) {
    value = node.Scalar();
  } else if (node.IsNull()) {
    return BadValue(path, "(empty)", "a value");
  }
  absl::Status s = SetKey(job, path, value);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(origin, ": ", s.message()));
  return absl::OkStatus();
}

}  // namespace

std::string JobParam(const Job& job, const std::string& key) {
  if (auto it = job.params.find(key); it != job.params.end()) return it->second;
  const ComponentKey* k = FindComponentKey(key);
  if (k == nullptr) {
    std::fprintf(stderr, "allround: job key '%s' is read but no component registered it\n", key.c_str());
    std::abort();
  }
  return k->default_value;
}

double JobNumber(const Job& job, const std::string& key) { return std::strtod(JobParam(job, key).c_str(), nullptr); }

int64_t JobInteger(const Job& job, const std::string& key) {
  return static_cast<int64_t>(std::strtoll(JobParam(job, key).c_str(), nullptr, 10));
}

bool JobBool(const Job& job, const std::string& key) { return ParseBoolText(JobParam(job, key)).value_or(false); }

std::vector<int64_t> JobIntegers(const Job& job, const std::string& key) {
  return ParseIntegerListText(JobParam(job, key)).value_or(std::vector<int64_t>{});
}

absl::StatusOr<Job> ParseJobYaml(const std::string& text, const std::string& origin) {
  Job job;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid YAML: ", e.what()));
  }
  if (root.IsNull()) return job;  // an empty job keeps every default
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": a job must be a YAML map of keys"));
  }
  // A conversion yaml-cpp cannot make throws (found by tests/fuzz/job): one clear error, never a
  // terminated process.
  absl::Status s;
  try {
    s = ApplyYamlNode(job, root, "", origin);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", e.what()));
  }
  if (!s.ok()) return s;
  return job;
}

absl::StatusOr<Job> LoadJobFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("job file '", path, "': cannot open: ", std::strerror(errno)));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  return ParseJobYaml(buf.str(), path);
}

absl::Status SetJobKey(Job& job, const std::string& key, const std::string& value) {
  absl::Status s = SetKey(job, key, value);
  if (absl::IsNotFound(s)) return UnknownKey(key, "flag");
  return s;
}

bool IsPlainName(const std::string& name) {
  return !name.empty() && name.size() <= 128 && name != "." && name != ".." &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
         });
}

namespace {
std::vector<std::function<absl::Status(const Job&)>>& JobChecks() {
  static auto* checks = new std::vector<std::function<absl::Status(const Job&)>>;
  return *checks;
}
}  // namespace

absl::Status ValidateJob(const Job& job) {
  // The name is a path component (runs/<name>) and the prefix of every checkpoint id (<name>/<round>).
  if (!IsPlainName(job.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job key 'name': bad value '", job.name, "' (", kPlainNameRule,
        "; it names the run directory and the checkpoints)"));
  }
  if (job.data.name == "text" && job.data.augment != "none") {
    return absl::InvalidArgumentError("job key 'data.augment': text takes no image augmentation (give none)");
  }
  if (job.data.scale == "unit" && job.mode != "supervised") {
    // The other image modes undo the standardization to build views and samples (modes::kImageMean).
    return absl::InvalidArgumentError(absl::StrCat("job key 'data.scale': unit is for the supervised mode; mode '",
                                                   job.mode, "' needs standardize"));
  }
  if ((job.partition.scheme == "file") != !job.partition.file.empty()) {
    return absl::InvalidArgumentError(
        job.partition.file.empty()
            ? "job key 'partition.file': partition.scheme file needs the file of each site's example indices"
            : absl::StrCat("job key 'partition.file': for the file scheme; partition.scheme is '",
                           job.partition.scheme, "'"));
  }
  if (const auto& given = job.partition.site_labels; !given.empty()) {
    if (job.partition.scheme != "labels") {
      return absl::InvalidArgumentError(absl::StrCat("job key 'partition.site_labels': for the labels scheme; "
                                                     "partition.scheme is '", job.partition.scheme, "'"));
    }
    if (static_cast<int64_t>(given.size()) != job.partition.sites) {
      return absl::InvalidArgumentError(absl::StrCat("job key 'partition.site_labels': ", given.size(),
                                                     " label sets for partition.sites = ", job.partition.sites));
    }
    for (size_t i = 0; i < given.size(); ++i) {
      if (static_cast<int64_t>(given[i].size()) != job.partition.labels_per_site) {
        return absl::InvalidArgumentError(absl::StrCat("job key 'partition.site_labels': site ", i, " has ",
                                                       given[i].size(), " labels, partition.labels_per_site is ",
                                                       job.partition.labels_per_site));
      }
    }
  }
  if (job.data.dir.empty()) return absl::InvalidArgumentError("job key 'data.dir': empty");
  if (job.optimizer.lr <= 0) return absl::InvalidArgumentError("job key 'optimizer.lr': must be > 0");
  if (job.optimizer.nesterov && (job.optimizer.momentum <= 0 || job.optimizer.name != "sgd")) {
    return absl::InvalidArgumentError("job key 'optimizer.nesterov': needs sgd with momentum > 0");
  }
  if (job.optimizer.beta1 >= 1 || job.optimizer.beta2 >= 1) {
    return absl::InvalidArgumentError("job keys 'optimizer.beta1/beta2': must be < 1");
  }
  for (const auto& check : JobChecks()) {
    if (auto s = check(job); !s.ok()) return s;
  }
  return absl::OkStatus();
}

bool RegisterJobCheck(std::function<absl::Status(const Job&)> check) {
  JobChecks().push_back(std::move(check));
  return true;
}

absl::Status ApplyJobFlags(Job& job, const std::vector<std::string>& flags) {
  for (size_t i = 0; i < flags.size(); ++i) {
    const std::string& f = flags[i];
    if (!absl::StartsWith(f, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", f, "'"));
    }
    std::string key = f.substr(2);
    std::string value;
    const size_t eq = key.find('=');
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else if (i + 1 < flags.size()) {
      value = flags[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", key, ": missing value"));
    }
    absl::Status s = SetKey(job, key, value);
    if (absl::IsNotFound(s)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown flag --", key, " (not a job key; see --help for flags and job keys)"));
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, std::string>> JobKeys() {
  std::vector<std::pair<std::string, std::string>> out;
  Job defaults;
  for (const Key& k : Keys()) {
    out.emplace_back(k.name, absl::StrCat(k.help, " [", k.get(defaults), "]"));
  }
  for (const ComponentKey* k : ComponentKeys()) {
    out.emplace_back(k->key, absl::StrCat(k->help, " (", ComponentsReading(k->key), ") [", k->default_value, "]"));
  }
  return out;
}

std::string JobToYaml(const Job& job) {
  // Every key, the Job's own and the components', each with its value.
  std::vector<std::pair<std::string, std::string>> keys;
  for (const Key& k : Keys()) keys.emplace_back(k.name, k.get(job));
  for (const ComponentKey* k : ComponentKeys()) keys.emplace_back(k->key, JobParam(job, k->key));
  // Each section once, at its first key's place, holding all its keys: a section written twice
  // would be a duplicate YAML key, which ParseJobYaml refuses and other readers resolve by
  // keeping only the last (PyYAML would lose data.dir behind a later data.test_limit).
  std::vector<std::string> order;  // top-level keys and sections, in first-appearance order
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> sections;
  std::map<std::string, std::string> top_values;
  for (const auto& [name, value] : keys) {
    const size_t dot = name.find('.');
    const std::string top = dot == std::string::npos ? name : name.substr(0, dot);
    if (std::find(order.begin(), order.end(), top) == order.end()) order.push_back(top);
    if (dot == std::string::npos) {
      top_values[top] = value;
    } else {
      sections[top].emplace_back(name.substr(dot + 1), value);
    }
  }
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const std::string& top : order) {
    auto section = sections.find(top);
    if (section == sections.end()) {
      out << YAML::Key << top << YAML::Value << top_values[top];
      continue;
    }
    out << YAML::Key << top << YAML::Value << YAML::BeginMap;
    for (const auto& [name, value] : section->second) out << YAML::Key << name << YAML::Value << value;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string ResolvedRunDir(const Job& job) {
  return absl::StrReplaceAll(job.run_dir, {{"{name}", job.name}});
}

}  // namespace allround
