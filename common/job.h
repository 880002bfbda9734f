#ifndef ALLROUND_COMMON_JOB_H_
#define ALLROUND_COMMON_JOB_H_

// A job: the YAML file that says what to train, on what, how, and where to write. Every key has a
// dotted name ("optimizer.lr"); a flag `--optimizer.lr=0.05` overrides the same key. Unknown keys
// and bad values are refused with the key's name, so a typo never silently trains something else.
//
// Plain data plus pure functions; thread-compatible.

#include <cstdint>
#include <map>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace allround {

// The model's own keys (model.hidden, model.width, ...) are registered beside each model
// (algorithms/models/networks.cc) and held in Job::params; models::ModelSpecFromJob reads them.
struct ModelJobSpec {
  std::string name = "simple_cnn";   // a registered model (mlp | simple_cnn | fedavg_cnn | resnet | vit)
  std::string init;                  // initial weights: a safetensors file (e.g. from PyTorch)
};

struct DataSpec {
  std::string name = "fashion_mnist";
  std::string dir = "/usr/share/datasets/fashion-mnist";
  std::string augment = "none";      // none | flip | crop | flip_crop
  std::string scale = "standardize"; // image pixels: standardize (Fashion-MNIST's mean and std) or
                                     // unit ([0, 1], as torchvision's ToTensor gives); unit is for
                                     // the supervised mode, whose inputs nothing else reads back
  int64_t train_limit = 0;           // use only the first N training examples (0: all)
  int64_t test_limit = 0;            // evaluate on only the first N test examples (0: all)
  int64_t labels_per_class = 0;      // keep the labels of only N training images per class
                                     // (seeded); semi-supervised modes use the rest unlabelled
};

struct OptimizerSpec {
  std::string name = "sgd";          // sgd | adam | adamw
  double lr = 0.05;
  double momentum = 0.9;             // sgd
  bool nesterov = false;             // sgd
  double weight_decay = 1e-5;
  double beta1 = 0.9;                // adam, adamw
  double beta2 = 0.999;
  double eps = 1e-8;
};

struct ScheduleSpec {
  std::string name = "cosine";       // constant | step | cosine
  int64_t warmup_steps = 0;          // linear warmup from 0 to lr, then the schedule
  double warmup_epochs = 0.0;        // alternative to warmup_steps, converted at run time
  int64_t step_epochs = 1;           // step: multiply by gamma every step_epochs epochs
  double gamma = 0.1;
  double min_lr = 0.0;               // cosine: the floor
};

struct TrainSpec {
  int64_t epochs = 10;
  int64_t batch_size = 64;
  int64_t eval_batch_size = 1000;
  int64_t eval_every = 1;            // evaluate after every K-th epoch (and the last)
  int64_t max_steps = 0;             // stop after this many steps in all (0: no limit)
  double progress_every_s = 10.0;    // a progress line at most this often
};

struct CommSpec {
  std::string backend = "auto";      // auto (nccl on cuda; MPI under mpirun; else local) | local | mpi | nccl
  double timeout_s = 300;            // a collective not done by then fails, naming the op
  double bucket_mb = 25;             // Reducer bucket cap
  double first_bucket_mb = 1;        // the first bucket's cap (it launches earliest)
};

struct CheckpointSpec {
  bool enabled = true;
  std::string dir;                   // the RocksDB store ("": <run_dir>/checkpoints)
  int64_t every_rounds = 1;          // after every K-th round (0: never by rounds)
  int64_t every_steps = 0;           // after every K-th step (0: never by steps)
  int64_t keep_last = 3;             // retention: the newest N
  int64_t keep_every = 0;            // and every M-th (0: none)
};

struct FederatedSpec {
  int64_t rounds = 10;
  double fraction = 1.0;             // of the alive sites sampled per round
  int64_t min_sites = 1;             // updates a round needs to close
  int64_t min_available = 1;         // alive sites before a round starts
  double round_timeout_s = 600;      // a round's deadline
  double site_timeout_s = 60;        // no contact for this long: the site is not alive
  int64_t local_epochs = 1;          // a site's training per round
  double site_eval_fraction = 0.1;   // of a site's examples held out as its own test split
                                     // (federated evaluation; 0: none, all examples train)
  // What one site can make the coordinator hold or do (coordinator/limits.h derives the rest):
  int64_t max_streams = 64;          // FetchModel and SubmitUpdate streams open at once
  double first_message_s = 10;       // a SubmitUpdate stream's first message must come within this
  double stream_idle_s = 60;         // a stream silent (or not reading) for this long is ended
  int64_t max_site_examples = int64_t{1000000000000};  // the most examples a site may declare
  int64_t max_echo_chars = 128;      // of any string from a request, quoted back in an error
};

// The strategy's own keys (strategy.server_lr, ...) are registered beside each strategy
// (algorithms/aggregation/strategies.cc) and held in Job::params.
struct StrategyJobSpec {
  std::string name = "fedavg";
};

// Text corpora (data.name text).
struct TextSpec {
  int64_t vocab_size = 8000;         // the BPE tokenizer's, trained on the training documents
  int64_t seq_len = 64;              // tokens per sequence ([CLS] first; padded, longer documents split)
  double test_fraction = 0.1;        // documents held out (seeded)
};

// TensorBoard event files in the run directory (observe/run_board.h).
struct TensorBoardSpec {
  bool enabled = true;
  bool histograms = true;            // of the model's weights (and the sites' update norms) each round
};

struct PartitionSpec {
  std::string scheme = "iid";        // iid | dirichlet | labels | file
  int64_t sites = 1;
  double beta = 0.5;                 // dirichlet
  int64_t labels_per_site = 2;       // labels (#C=k)
  // labels: each site's label set, given rather than drawn from the seed (empty: drawn). With it,
  // a run can use the very partition of another system's run, e.g. NIID-Bench's draw for a seed.
  std::vector<std::vector<int64_t>> site_labels = {};
  int64_t min_per_site = 10;         // dirichlet: resample until every site has this many
  // file: each site's example indices as another system drew them, one line per site (the very
  // examples of, e.g., Flower's NIID-Bench run); read by the sites, not the coordinator.
  std::string file;
};

// The defaults are the embedded default job: NIID-Bench's SimpleCNN on Fashion-MNIST, SGD with
// momentum and a cosine schedule for 10 epochs (>= 89% test accuracy).
struct Job {
  std::string name = "simple_cnn";
  uint64_t seed = 1;
  int64_t threads = 0;               // intra-op threads (0: LibTorch's default)
  std::string mode = "supervised";   // supervised | fixmatch | pseudolabel | dino | vae | gan | mlm
  std::string device = "cpu";        // cpu | cuda (one GPU per rank; NCCL between ranks)
  bool deterministic = true;         // cuda: deterministic kernels, so a rerun or resume matches
  std::string loss = "cross_entropy";  // cross_entropy | l1 | mse | hinge
  ModelJobSpec model;
  DataSpec data;
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
  TrainSpec train;
  PartitionSpec partition;
  CommSpec comm;
  CheckpointSpec checkpoint;
  FederatedSpec federated;
  StrategyJobSpec strategy;
  TextSpec text;
  TensorBoardSpec tensorboard;
  std::string run_dir = "runs/{name}";  // {name} is replaced by the job's name
  // The keys components register beside their code (common/registry.h) that the job sets: a
  // strategy's (strategy.server_lr), a model's (model.hidden), a learning mode's (dino.out_dim,
  // semi.mu, ...). A key not here has its registered default.
  std::map<std::string, std::string> params;
};

// A registered component key's value in `job` (common/registry.h): what the job set, or the
// key's default. Aborts on a key no component registered (a programmer error).
std::string JobParam(const Job& job, const std::string& key);
double JobNumber(const Job& job, const std::string& key);
int64_t JobInteger(const Job& job, const std::string& key);
bool JobBool(const Job& job, const std::string& key);                      // a BooleanKey's
std::vector<int64_t> JobIntegers(const Job& job, const std::string& key);  // an IntegerListKey's

// Parses YAML text into a Job on top of the defaults. `origin` names the text in errors.
absl::StatusOr<Job> ParseJobYaml(const std::string& text, const std::string& origin);

// Reads and parses a job file; a missing or unreadable file is an error naming it.
absl::StatusOr<Job> LoadJobFile(const std::string& path);

// Sets one dotted key from its text form, as a flag gives it. Lists are comma-separated.
absl::Status SetJobKey(Job& job, const std::string& key, const std::string& value);

// Checks cross-key constraints (positive sizes, known names); the error names the key.
absl::Status ValidateJob(const Job& job);

// Registers a cross-key check that a component needs (the update pipeline refuses a strategy that
// cannot work on a sum); ValidateJob runs every one after its own, in registration order. Call it
// from a static initializer beside the component's code, as with common/registry.h. Returns true.
bool RegisterJobCheck(std::function<absl::Status(const Job&)> check);

// A name that can stand as one path component and one log token: 1..128 of letters, digits, '_',
// '-' and '.', and not "." or "..". Job names (runs/<name>, checkpoint ids) and site names
// (dumped updates' file names) follow it.
bool IsPlainName(const std::string& name);
// The rule IsPlainName checks, in words, for the errors that refuse a name.
inline constexpr char kPlainNameRule[] = "1 to 128 letters, digits, '_', '-' and '.'";

// Splits flags of the form `--key=value` or `--key value` into (key, value) pairs and applies
// them; returns an error naming the first flag that is not a job key or has a bad value.
absl::Status ApplyJobFlags(Job& job, const std::vector<std::string>& flags);

// Every dotted key with a one-line description, for --help.
std::vector<std::pair<std::string, std::string>> JobKeys();

// The job as YAML (every key), for the run directory and for reproducing a run.
std::string JobToYaml(const Job& job);

// run_dir with {name} substituted.
std::string ResolvedRunDir(const Job& job);

}  // namespace allround

#endif  // ALLROUND_COMMON_JOB_H_
