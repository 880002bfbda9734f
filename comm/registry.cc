#include "comm/registry.h"

#include "absl/strings/str_cat.h"

#if defined(ALLROUND_HAVE_MPI)
#include "comm/mpi/mpi_communicator.h"
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

}  // namespace

std::string AvailableBackends() {
#if defined(ALLROUND_HAVE_MPI)
  return "local, mpi";
#else
  return "local";
#endif
}

absl::StatusOr<std::unique_ptr<CommContext>> InitComm(const std::string& backend, int* argc, char*** argv) {
  if (backend != "auto" && backend != "local" && backend != "mpi") {
    return absl::InvalidArgumentError(absl::StrCat("unknown communication backend '", backend,
                                                   "' (known: auto, ", AvailableBackends(), ")"));
  }
#if defined(ALLROUND_HAVE_MPI)
  if (backend == "mpi" || (backend == "auto" && MpiEnvironment::LaunchedByMpirun())) {
    auto env = MpiEnvironment::Init(argc, argv);
    if (!env.ok()) return env.status();
    auto comm = MakeMpiCommunicator(env->get());
    if (!comm.ok()) return comm.status();
    return std::unique_ptr<CommContext>(std::make_unique<MpiContext>(*std::move(env), *std::move(comm)));
  }
#else
  if (backend == "mpi") {
    return absl::FailedPreconditionError("this build has no MPI backend (install libopenmpi-dev and rebuild)");
  }
#endif
  return std::unique_ptr<CommContext>(std::make_unique<LocalContext>());
}

}  // namespace allround::comm
