#include "train/distributed.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>

#include "lib/numerics/error.hpp"

#if QKV_MPI
#include <mpi.h>
#endif

#ifndef QKV_VERSION
#define QKV_VERSION "unknown"
#endif
#ifndef QKV_GIT_COMMIT
#define QKV_GIT_COMMIT "unknown"
#endif

namespace qkv::train {
using nlohmann::json;

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void sum(std::span<float>) override {}
  void sum(std::span<double>) override {}
  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> values) override {
    return {values.begin(), values.end()};
  }
  std::vector<std::string> gather_text(const std::string& text) override { return {text}; }
  void broadcast_text(std::string&) override {}
};

#if QKV_MPI
/// Calls of one MPI function with counts that fit an int (MPI's count type).
template <class Call>
void in_int_chunks(std::size_t count, Call&& call) {
  constexpr std::size_t most = std::size_t(INT_MAX) / 2;
  for (std::size_t first = 0; first < count; first += most) call(first, int(std::min(most, count - first)));
}

void check_mpi(int status, const char* call) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(status, text, &length);
  throw Error(std::string(call) + " failed: " + std::string(text, std::size_t(length)));
}

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(std::span<float> values) override { sum_in_place(values.data(), values.size(), MPI_FLOAT); }
  void sum(std::span<double> values) override { sum_in_place(values.data(), values.size(), MPI_DOUBLE); }
  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> values) override {
    std::vector<std::uint64_t> all(values.size() * std::size_t(size_));
    check_mpi(MPI_Allgather(values.data(), int(values.size()), MPI_UINT64_T, all.data(), int(values.size()),
                            MPI_UINT64_T, MPI_COMM_WORLD),
              "MPI_Allgather");
    return all;
  }
  std::vector<std::string> gather_text(const std::string& text) override {
    const int length = int(text.size());
    std::vector<int> lengths(static_cast<std::size_t>(size_));
    check_mpi(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
    std::vector<int> offsets(static_cast<std::size_t>(size_), 0);
    for (std::size_t r = 1; r < offsets.size(); ++r) offsets[r] = offsets[r - 1] + lengths[r - 1];
    std::string all(rank_ == 0 ? std::size_t(offsets.back() + lengths.back()) : 0, '\0');
    check_mpi(MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, 0,
                          MPI_COMM_WORLD),
              "MPI_Gatherv");
    std::vector<std::string> texts;
    if (rank_ == 0)
      for (std::size_t r = 0; r < lengths.size(); ++r)
        texts.push_back(all.substr(std::size_t(offsets[r]), std::size_t(lengths[r])));
    return texts;
  }
  void broadcast_text(std::string& text) override {
    unsigned long long length = text.size();
    check_mpi(MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD), "MPI_Bcast");
    text.resize(std::size_t(length));
    in_int_chunks(text.size(), [&](std::size_t first, int count) {
      check_mpi(MPI_Bcast(text.data() + first, count, MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
    });
  }

 private:
  template <class T>
  void sum_in_place(T* data, std::size_t count, MPI_Datatype type) {
    in_int_chunks(count, [&](std::size_t first, int n) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + first, n, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    });
  }
  int rank_ = 0, size_ = 1;
};
#endif

/// How many processes an MPI launcher (Open MPI's mpirun, or a PMI one) says it started; 0
/// when the program was not started by one.
int launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* value = std::getenv(name)) return std::max(1, std::atoi(value));
  return 0;
}

/// {"/options/lr": 0.001, ...}: every leaf of a JSON value by its pointer.
void flatten(const json& value, const std::string& pointer, std::map<std::string, json>& leaves) {
  if (value.is_object() && !value.empty()) {
    for (const auto& item : value.items()) flatten(item.value(), pointer + "/" + item.key(), leaves);
  } else {
    leaves[pointer] = value;
  }
}

/// "options.lr: 0.002 on rank 1, 0.001 on rank 0" for each leaf that differs.
std::string differences(const json& root, const json& other, int rank) {
  std::map<std::string, json> a, b;
  flatten(root, "", a);
  flatten(other, "", b);
  std::string text;
  const auto name = [](std::string pointer) {
    std::replace(pointer.begin(), pointer.end(), '/', '.');
    return pointer.empty() ? std::string("(the whole identity)") : pointer.substr(1);
  };
  const auto shown = [](const std::map<std::string, json>& leaves, const std::string& key) {
    const auto found = leaves.find(key);
    return found == leaves.end() ? std::string("absent") : found->second.dump();
  };
  std::map<std::string, bool> keys;
  for (const auto& [key, unused] : a) keys[key] = true;
  for (const auto& [key, unused] : b) keys[key] = true;
  for (const auto& [key, unused] : keys) {
    const std::string mine = shown(b, key), root_value = shown(a, key);
    if (mine != root_value)
      text += "\n  " + name(key) + ": " + mine + " on rank " + std::to_string(rank) + ", " + root_value + " on rank 0";
  }
  return text;
}

}  // namespace

std::shared_ptr<Communicator> single_process() { return std::make_shared<SingleProcess>(); }

bool built_with_mpi() { return QKV_MPI != 0; }

std::string build_identity() {
  return std::string("qkv ") + QKV_VERSION + " (git " + QKV_GIT_COMMIT + ", " +
         (sizeof(real) == sizeof(double) ? "float64" : "float32") + ")";
}

MpiSession::MpiSession(int& argc, char**& argv) {
#if QKV_MPI
  // Started without a launcher, the program is one process and never touches MPI: no
  // singleton start-up (Open MPI's forks a helper daemon and leaks what valgrind reports).
  if (launcher_world_size() == 0) {
    world_ = single_process();
    return;
  }
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    int provided = 0;
    // qkv's own threads never call MPI: only the main thread does.
    check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    initialized_here_ = true;
  }
  world_ = std::make_shared<MpiWorld>();
#else
  (void)argc;
  (void)argv;
  const int launched = launcher_world_size();
  if (launched > 1)
    throw Error("this qkv was built without MPI (configure with -DQKV_MPI=ON, Open MPI installed) but was started "
                "as one of " + std::to_string(launched) + " processes: each would train alone");
  world_ = single_process();
#endif
}

MpiSession::~MpiSession() {
#if QKV_MPI
  if (initialized_here_) MPI_Finalize();
#endif
}

void MpiSession::abort(int status) const {
#if QKV_MPI
  if (world_->size() > 1) MPI_Abort(MPI_COMM_WORLD, status);
#else
  (void)status;
#endif
}

void check_same_on_every_rank(Communicator& communicator, const json& identity) {
  if (communicator.size() == 1) return;
  const std::vector<std::string> texts = communicator.gather_text(identity.dump());
  std::string message;
  if (communicator.rank() == 0) {
    for (std::size_t r = 1; r < texts.size(); ++r)
      if (texts[r] != texts[0]) message += differences(identity, json::parse(texts[r]), int(r));
  }
  communicator.broadcast_text(message);
  if (!message.empty())
    throw Error("the " + std::to_string(communicator.size()) +
                " processes were not started alike (every rank needs the same qkv, model, data and options):" +
                message);
}

std::uint64_t hash_of(const Array& values) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a 64
  const auto* bytes = reinterpret_cast<const unsigned char*>(values.data());
  for (std::size_t i = 0; i < values.size() * sizeof(real); ++i) {
    hash ^= bytes[i];
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

void check_parameters_agree(Communicator& communicator, const std::vector<NamedVariable>& parameters,
                            const std::string& when) {
  if (communicator.size() == 1) return;
  std::vector<std::uint64_t> mine;
  mine.reserve(parameters.size());
  for (const auto& named : parameters) mine.push_back(hash_of(named.second.value()));
  const std::vector<std::uint64_t> all = communicator.all_gather(mine);
  const std::size_t count = parameters.size();
  for (std::size_t i = 0; i < count; ++i) {
    std::string ranks;
    for (std::size_t r = 1; r < std::size_t(communicator.size()); ++r)
      if (all[r * count + i] != all[i]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    if (!ranks.empty())
      throw Error(when + ": the parameters differ between the processes: '" + parameters[i].first +
                  "' (the first tensor that differs) on rank " + ranks + " is not rank 0's");
  }
}

GradientAllReduce::GradientAllReduce(std::vector<Variable> parameters) : parameters_(std::move(parameters)) {
  std::size_t total = 0;
  for (const Variable& parameter : parameters_) total += parameter.numel();
  buffer_.resize(total + parameters_.size());
}

void GradientAllReduce::sum(Communicator& communicator, real scale) {
  if (communicator.size() == 1) return;
  const auto start = std::chrono::steady_clock::now();
  // [every gradient, flattened, in parameter order | one presence flag per parameter]
  real* flat = buffer_.data();
  real* present = buffer_.data() + buffer_.size() - parameters_.size();
  for (std::size_t p = 0; p < parameters_.size(); ++p) {
    const Variable& parameter = parameters_[p];
    const std::size_t n = parameter.numel();
    if (parameter.has_grad()) {
      const real* grad = parameter.grad().data();
      for (std::size_t i = 0; i < n; ++i) flat[i] = grad[i] * scale;
      present[p] = 1;
    } else {
      std::fill_n(flat, n, real(0));
      present[p] = 0;
    }
    flat += n;
  }
  communicator.sum(std::span<real>(buffer_));
  flat = buffer_.data();
  for (std::size_t p = 0; p < parameters_.size(); ++p) {
    Variable parameter = parameters_[p];
    const std::size_t n = parameter.numel();
    if (present[p] > 0) std::copy_n(flat, n, parameter.grad_buffer().data());
    flat += n;
  }
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++calls_;
}

}  // namespace qkv::train
