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

struct ModelSpec {
  std::string name = "simple_cnn";   // mlp | simple_cnn | fedavg_cnn | resnet | vit
  std::vector<int64_t> hidden = {200, 200};  // mlp only
  int64_t width = 16;                // resnet only: channels of the first stage
  int64_t fc = 512;                  // fedavg_cnn: units of the fully connected hidden layer
  int64_t patch = 7;                 // vit: side of the square patches (must divide the image)
  int64_t dim = 64;                  // vit: token width
  int64_t depth = 4;                 // vit: transformer blocks
  int64_t heads = 4;                 // vit: attention heads (dim a multiple of them)
  int64_t mlp_dim = 128;             // vit: hidden width of each block's MLP
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

// Semi-supervised modes (fixmatch, pseudolabel): per step B labelled and mu x B unlabelled
// images; pseudo-labels where the weak view's probability >= tau; unlabelled loss weight lambda_u.
struct SemiSpec {
  int64_t mu = 7;
  double tau = 0.95;
  double lambda_u = 1.0;
};

// DINO (self-distillation): student and EMA teacher of the same backbone (model.name, emitting
// embed_dim features) with a 3-layer MLP head (hidden, bottleneck, a weight-normalized last layer
// of out_dim); multi-crop with 2 global and local_crops local views.
struct DinoSpec {
  int64_t embed_dim = 128;
  int64_t hidden_dim = 256;
  int64_t bottleneck_dim = 64;
  int64_t out_dim = 1024;
  bool head_bn = true;               // batch norm in the head's hidden layers (DINO's use_bn, for CNNs)
  int64_t local_crops = 4;
  int64_t local_size = 28;           // local crops are resized to this (CNN backbones need 28)
  double student_temp = 0.1;
  double teacher_temp = 0.04;
  double warmup_teacher_temp = 0.04;  // teacher temperature at the start, linear to teacher_temp
  double warmup_fraction = 0.0;       // over this fraction of the run
  double momentum = 0.996;            // teacher EMA momentum, cosine to 1 over the run
  double center_momentum = 0.9;
  int64_t knn_k = 20;
  double knn_temp = 0.07;
  int64_t knn_bank = 10000;           // labelled training images the k-NN evaluation votes with
  std::string knn_features = "backbone";  // backbone (the teacher's) | pixels (the baseline)
  int64_t probe_steps = 300;          // linear probe on the same features and bank: full-batch Adam steps (0: off)
  double probe_lr = 0.05;
};

// The VAE mode (Kingma & Welling 2014): MLP encoder and decoder, Bernoulli likelihood on pixels.
struct VaeSpec {
  int64_t latent = 16;
  int64_t hidden = 400;
  double denoise_std = 0.0;          // > 0: a denoising autoencoder instead (Gaussian noise of this std
                                     // on the input pixels, clean target, no KL)
};

// The GAN mode: DCGAN for 28x28 images.
struct GanSpec {
  int64_t noise_dim = 100;
  int64_t width = 64;                // discriminator channels w, 2w; generator 2w, w
  int64_t eval_samples = 10000;      // generated images the Frechet distance compares
  int64_t classifier_epochs = 2;     // the evaluation classifier's training on the labelled bank
  int64_t classifier_features = 128; // its penultimate width: the features the distance compares
  double ema = 0;                    // evaluate (and sample) an exponential moving average of the
                                     // generator's weights with this decay per step (e.g. 0.999);
                                     // 0: the generator itself. In 10 epochs of the shipped job (from
                                     // LibTorch's initial weights) the average did not beat it
                                     // (Frechet distance 8.09 vs 7.54).
  bool batch_norm = true;            // in both networks (DCGAN's); off, a step under N ranks equals
                                     // one process's step on the N batches together
  std::string init = "dcgan";        // initial weights: "dcgan" (Radford et al.: every convolution and
                                     // linear weight N(0, 0.02), batch-norm scales N(1, 0.02), biases
                                     // 0), or "torch" (LibTorch's defaults)
};

// Text corpora (data.name text) and the masked-LM mode.
struct TextSpec {
  int64_t vocab_size = 8000;         // the BPE tokenizer's, trained on the training documents
  int64_t seq_len = 64;              // tokens per sequence ([CLS] first; padded, longer documents split)
  double test_fraction = 0.1;        // documents held out (seeded)
};
struct MlmSpec {
  int64_t layers = 2;
  int64_t hidden = 128;
  int64_t heads = 2;
  double mask_prob = 0.15;           // tokens selected; of them 80% [MASK], 10% random, 10% unchanged
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
  ModelSpec model;
  DataSpec data;
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
  TrainSpec train;
  PartitionSpec partition;
  CommSpec comm;
  CheckpointSpec checkpoint;
  FederatedSpec federated;
  StrategyJobSpec strategy;
  SemiSpec semi;
  DinoSpec dino;
  VaeSpec vae;
  GanSpec gan;
  TextSpec text;
  MlmSpec mlm;
  std::string run_dir = "runs/{name}";  // {name} is replaced by the job's name
  // The keys components register beside their code (common/registry.h) that the job sets; a key
  // not here has its registered default.
  std::map<std::string, std::string> params;
};

// A registered component key's value in `job` (common/registry.h): what the job set, or the
// key's default. Aborts on a key no component registered (a programmer error).
std::string JobParam(const Job& job, const std::string& key);
double JobNumber(const Job& job, const std::string& key);
int64_t JobInteger(const Job& job, const std::string& key);

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
