#pragma once
// Several processes training one model (data parallelism), or sharing out a sweep's runs, over
// Open MPI (docs/distributed.md).
//
//   int main(int argc, char** argv) {
//     qkv::train::MpiSession mpi(argc, argv);      // MPI_Init ... MPI_Finalize
//     Trainer trainer(model, vocabs, pairs, options);
//     trainer.set_communicator(mpi.world());        // every rank: same model, data, options
//     if (mpi.is_root()) trainer.add_callback(checkpointer);   // rank 0 alone writes
//     trainer.train();
//   }
//   mpirun -np 2 qkv-train ...
//
// The Trainer (train/trainer.hpp) gives each rank a disjoint block of rows of every global
// batch, normalises the loss by the global batch's token count, and sums the gradients over the
// ranks in one flat buffer (GradientAllReduce) before clipping and the optimizer step, so every
// rank takes the step one process would take on the whole batch (up to float32 summation
// order). Dropout masks are drawn as for the whole batch and read at the rank's rows
// (kernels::ScopedBatchShard), so they do not depend on the number of ranks either.
//
// Communicator is the interface the Trainer and the sweep talk to; qkv built without MPI
// (QKV_MPI=OFF) has only the single-process one, and MpiSession then refuses to run as one of
// several processes rather than have each train alone into the same directory.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/gradcheck.hpp"
#include "autograd/variable.hpp"

namespace qkv::train {

/// The processes of one job, numbered 0 .. size()-1. Every call is collective: every rank
/// makes it, in the same order, or the job hangs (MpiSession::abort ends such a job).
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Element-wise sum over the ranks, in place (MPI_Allreduce).
  virtual void sum(std::span<float> values) = 0;
  virtual void sum(std::span<double> values) = 0;
  /// Every rank's `values` (the same count on each), concatenated in rank order, on every rank.
  virtual std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> values) = 0;
  /// Every rank's `text` in rank order on rank 0; empty on the others.
  virtual std::vector<std::string> gather_text(const std::string& text) = 0;
  /// Rank 0's `text` on every rank.
  virtual void broadcast_text(std::string& text) = 0;
};

/// A job of one process: every collective is the identity.
std::shared_ptr<Communicator> single_process();

/// True when qkv was built with Open MPI (CMake option QKV_MPI).
bool built_with_mpi();
/// "qkv 0.1.0 (git 9f8f7e9, float32)": what ranks must share to train together.
std::string build_identity();

/// MPI for the life of a program started by mpirun: MPI_Init_thread (MPI calls from the main
/// thread only) in the constructor, MPI_Finalize in the destructor. Started without mpirun, the
/// program is one process and MPI is never initialised: world() is single_process(). Built
/// without MPI, the constructor throws Error when the environment says mpirun started several
/// processes (each would train alone).
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  std::shared_ptr<Communicator> world() const { return world_; }
  bool is_root() const { return world_->rank() == 0; }
  /// Ends every process of the job with `status` (MPI_Abort): for an error that only some
  /// ranks met, which would leave the others waiting in a collective. A no-op alone.
  void abort(int status) const;

 private:
  std::shared_ptr<Communicator> world_;
  bool initialized_here_ = false;
};

/// The start-up handshake: every rank's `identity` (an object: build_identity(), options,
/// model config, ...) must equal rank 0's. Otherwise every rank throws the same Error, naming
/// each rank and each field that differs (`options.lr: 0.002 on rank 1, 0.001 on rank 0`).
void check_same_on_every_rank(Communicator& communicator, const nlohmann::json& identity);

/// 64-bit FNV-1a of a tensor's bytes.
std::uint64_t hash_of(const Array& values);

/// Every parameter's hash on every rank; a difference throws Error on every rank naming the
/// first parameter (in registration order) that differs, the ranks and `when`.
void check_parameters_agree(Communicator& communicator, const std::vector<NamedVariable>& parameters,
                            const std::string& when);

/// Sums the gradients of a fixed list of parameters over the ranks in one flat buffer per
/// step (one MPI_Allreduce). A parameter without a gradient on some rank counts as zero there;
/// one without a gradient on every rank stays without (as it would in one process).
class GradientAllReduce {
 public:
  explicit GradientAllReduce(std::vector<Variable> parameters);
  /// grad := Σ_ranks scale_rank · grad_rank for every parameter.
  void sum(Communicator& communicator, real scale);
  /// What one sum() sends into the all-reduce: the gradients and one presence flag each.
  std::size_t bytes_per_step() const { return buffer_.size() * sizeof(real); }
  /// Wall time spent in sum() so far (packing, MPI_Allreduce, unpacking), and its calls.
  double seconds() const { return seconds_; }
  std::size_t calls() const { return calls_; }

 private:
  std::vector<Variable> parameters_;
  std::vector<real> buffer_;  // [Σ numel + parameters]
  double seconds_ = 0;
  std::size_t calls_ = 0;
};

}  // namespace qkv::train
