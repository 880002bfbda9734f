#include "comm/registry.h"

#include "absl/strings/str_cat.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>

#include "comm/checked_communicator.h"
#include "comm/rendezvous.h"
#include "common/registry.h"

#if defined(ALLROUND_HAVE_MPI)
#include "comm/mpi/mpi_communicator.h"
#endif
#if defined(ALLROUND_HAVE_NCCL)
#include "comm/nccl/nccl_communicator.h"
#endif

namespace allround::comm {
namespace {

class LocalContext final : public CommContext {
 public:
  LocalContext() : comm_(MakeLocalCommunicator()) {}
  Communicator& comm() override { return *comm_; }

 private:
  std::unique_ptr<Communicator> comm_;
};

#if defined(ALLROUND_HAVE_MPI)
class MpiContext final : public CommContext {
 public:
  MpiContext(std::unique_ptr<MpiEnvironment> env, std::unique_ptr<Communicator> comm)
      : env_(std::move(env)), comm_(std::move(comm)) {}
  ~MpiContext() override { comm_.reset(); }  // before MPI_Finalize
  Communicator& comm() override { return *comm_; }

 private:
  std::unique_ptr<MpiEnvironment> env_;
  std::unique_ptr<Communicator> comm_;
};
#endif

#if defined(ALLROUND_HAVE_NCCL)
// NCCL over the GPUs, with whatever started the ranks carrying the unique id: MPI under mpirun,
// else the torchrun-style TCP rendezvous.
class NcclContext final : public CommContext {
 public:
  static absl::StatusOr<std::unique_ptr<CommContext>> Init(int* argc, char*** argv, std::chrono::milliseconds timeout) {
    auto ctx = std::unique_ptr<NcclContext>(new NcclContext());
    int rank = 0, world = 1, device = 0;
    std::string id;
#if defined(ALLROUND_HAVE_MPI)
    if (MpiEnvironment::LaunchedByMpirun()) {
      auto env = MpiEnvironment::Init(argc, argv);
      if (!env.ok()) return env.status();
      auto mpi = MakeMpiCommunicator(env->get());
      if (!mpi.ok()) return mpi.status();
      ctx->mpi_env_ = *std::move(env);
      ctx->mpi_ = *std::move(mpi);
      rank = ctx->mpi_->rank();
      world = ctx->mpi_->size();
      auto gpu = GpuOfRank(rank, world, CudaDeviceCount());
      if (!gpu.ok()) return gpu.status();
      device = *gpu;
      at::Tensor blob = at::zeros({128}, at::kByte);
      if (rank == 0) {
        auto made = NcclUniqueId();
        if (!made.ok()) return made.status();
        std::memcpy(blob.data_ptr(), made->data(), std::min<size_t>(128, made->size()));
      }
      if (auto s = ctx->mpi_->Broadcast(blob, 0)->Wait(timeout); !s.ok()) return s;
      id.assign(static_cast<const char*>(blob.data_ptr()), 128);
    }
#endif
    if (id.empty()) {
      auto config = RendezvousFromEnvironment();
      if (!config.ok() && std::getenv("RANK") == nullptr) {
        config = RendezvousConfig{};  // a single process with no launcher: a group of one
      }
      if (!config.ok()) return config.status();
      config->timeout = timeout;
      rank = config->rank;
      world = config->world_size;
      auto gpu = GpuOfRank(rank, world, CudaDeviceCount());
      if (!gpu.ok()) return gpu.status();
      device = *gpu;
      std::string mine;
      if (rank == 0) {
        auto made = NcclUniqueId();
        if (!made.ok()) return made.status();
        mine = *made;
      }
      auto got = BroadcastBlob(*config, mine);
      if (!got.ok()) return got.status();
      id = *got;
    }
    auto comm = MakeNcclCommunicator(rank, world, device, id, timeout);
    if (!comm.ok()) return comm.status();
    ctx->nccl_ = *std::move(comm);
    if (CommDebugEnabled() && world > 1) ctx->nccl_ = MakeCheckedCommunicator(std::move(ctx->nccl_));
    return std::unique_ptr<CommContext>(std::move(ctx));
  }
  ~NcclContext() override {
    nccl_.reset();
#if defined(ALLROUND_HAVE_MPI)
    mpi_.reset();
    mpi_env_.reset();
#endif
  }
  Communicator& comm() override { return *nccl_; }

 private:
  NcclContext() = default;
#if defined(ALLROUND_HAVE_MPI)
  std::unique_ptr<MpiEnvironment> mpi_env_;
  std::unique_ptr<Communicator> mpi_;
#endif
  std::unique_ptr<Communicator> nccl_;
};
#endif

}  // namespace

absl::StatusOr<int> GpuOfRank(int rank, int world, int devices) {
  if (devices <= 0) return absl::UnavailableError("NCCL backend: no CUDA device");
  // The name of the first of `vars` that is set (nullptr when none is), its value read into *value.
  auto from_env = [](std::initializer_list<const char*> vars, int* value) -> absl::StatusOr<const char*> {
    for (const char* var : vars) {
      auto v = IntFromEnvironment(var);
      if (absl::IsNotFound(v.status())) continue;
      if (!v.ok()) return v.status();
      if (*v < 0) return absl::InvalidArgumentError(absl::StrCat(var, "=", *v, " is below 0"));
      *value = *v;
      return var;
    }
    return static_cast<const char*>(nullptr);
  };
  int local = rank, local_size = 0;
  auto local_var = from_env({"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"}, &local);
  if (!local_var.ok()) return local_var.status();
  auto size_var = from_env({"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"}, &local_size);
  if (!size_var.ok()) return size_var.status();
  const std::string advice = absl::StrCat(": NCCL needs a GPU of its own for each rank, so start at most ", devices,
                                          " rank(s) per machine (or train on CPUs: device cpu)");
  if (world > 1 && *size_var != nullptr && local_size > devices) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank, ": this machine runs ", local_size, " ranks (",
                                                      *size_var, ") and has ", devices, " CUDA device(s)", advice));
  }
  if (world > 1 && *local_var != nullptr && local >= devices) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " is local rank ", local, " (", *local_var,
                                                      ") on a machine with ", devices, " CUDA device(s)", advice));
  }
  return local % devices;
}

namespace {

// Each backend registers its name, help and factory here (common/registry.h, kind "backend"), in
// every build: a job that names a backend this build lacks still parses, and InitComm says how to
// get it. The #ifs for optional backends stay in this file.
struct BackendRequest {
  std::string device;  // the job's device: "auto" takes NCCL for "cuda"
  int* argc;
  char*** argv;
  std::chrono::milliseconds timeout;
};
using BackendFactory = std::function<absl::StatusOr<std::unique_ptr<CommContext>>(const BackendRequest&)>;

TypedRegistry<BackendFactory>& Backends() {
  static auto* registry = new TypedRegistry<BackendFactory>("backend", "communication backend");
  return *registry;
}

absl::StatusOr<std::unique_ptr<CommContext>> InitLocal(const BackendRequest&) {
  return std::unique_ptr<CommContext>(std::make_unique<LocalContext>());
}

absl::StatusOr<std::unique_ptr<CommContext>> InitMpi(const BackendRequest& request) {
#if defined(ALLROUND_HAVE_MPI)
  auto env = MpiEnvironment::Init(request.argc, request.argv);
  if (!env.ok()) return env.status();
  auto comm = MakeMpiCommunicator(env->get());
  if (!comm.ok()) return comm.status();
  return std::unique_ptr<CommContext>(std::make_unique<MpiContext>(*std::move(env), *std::move(comm)));
#else
  return absl::FailedPreconditionError("this build has no MPI backend (install libopenmpi-dev and rebuild)");
#endif
}

absl::StatusOr<std::unique_ptr<CommContext>> InitNccl(const BackendRequest& request) {
#if defined(ALLROUND_HAVE_NCCL)
  return NcclContext::Init(request.argc, request.argv, request.timeout);
#else
  return absl::FailedPreconditionError("this build has no NCCL backend (build where the CUDA toolkit and NCCL are)");
#endif
}

bool LaunchedByMpirun() {
#if defined(ALLROUND_HAVE_MPI)
  return MpiEnvironment::LaunchedByMpirun();
#else
  return false;
#endif
}

std::string BuiltIn(bool built) { return built ? "" : " (not in this build)"; }

[[maybe_unused]] const bool kRegistered = [] {
  Backends().Register({"backend", "auto", "nccl for device cuda; else mpi when launched by mpirun; else local", {}},
                      [](const BackendRequest& request) {
                        if (request.device == "cuda") return InitNccl(request);
                        return LaunchedByMpirun() ? InitMpi(request) : InitLocal(request);
                      });
  Backends().Register({"backend", "local", "one process, no collectives to run", {}}, &InitLocal);
#if defined(ALLROUND_HAVE_MPI)
  constexpr bool kMpi = true;
#else
  constexpr bool kMpi = false;
#endif
#if defined(ALLROUND_HAVE_NCCL)
  constexpr bool kNccl = true;
#else
  constexpr bool kNccl = false;
#endif
  Backends().Register({"backend", "mpi", "Open MPI's collectives on CPU tensors, ranks from mpirun" + BuiltIn(kMpi), {}},
                      &InitMpi);
  Backends().Register({"backend", "nccl",
                       "NCCL on CUDA tensors, ranks from mpirun or torchrun-style variables" + BuiltIn(kNccl), {}},
                      &InitNccl);
  return true;
}();

}  // namespace

absl::StatusOr<std::unique_ptr<CommContext>> InitComm(const std::string& backend, const std::string& device,
                                                      int* argc, char*** argv, std::chrono::milliseconds timeout) {
  auto factory = Backends().Get(backend);
  if (!factory.ok()) return factory.status();
  return (**factory)(BackendRequest{device, argc, argv, timeout});
}

}  // namespace allround::comm
