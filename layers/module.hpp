#pragma once
// Module: the base of every layer. A module owns named parameters (trainable variables),
// buffers (state that is saved but not trained, e.g. a sinusoidal table) and submodules, and
// reports them with dotted names — `decoder.layers.0.self_attn.out_proj.weight` — the names
// PyTorch would give the same layer, so weights move between the two by name.
//
// Sizes carry PyTorch's names too, in constructors, options and accessors:
//
//   layer                          sizes
//   Linear                         in_features, out_features
//   Embedding                      num_embeddings, embedding_dim, padding_idx
//   LayerNorm                      normalized_shape (the last dim's size)
//   GRUCell / GRU                  input_size, hidden_size, num_layers
//   MultiheadAttention             embed_dim, num_heads (head_dim = embed_dim / num_heads)
//   Transformer*Layer, stacks      d_model, nhead, dim_feedforward, num_layers
//   positional encodings           d_model, max_len (PyTorch's tutorial PositionalEncoding)
//
// The model configs use the same names in C++ (TransformerConfig::nhead, max_len;
// BahdanauConfig::embedding_dim); their config.json keys keep the older spellings —
// "num_heads", "max_length", "embed_size" — so files written before still load.
//
// Seeding: randomness comes in as a generator, never as a bare uint64 seed.
//  - `Rng& rng`: a constructor that draws while it builds (initial weights, or the streams it
//    hands to its parts) draws from the caller's generator, in registration order. One seed
//    (a model config's) threaded through every layer then reproduces the whole model, as
//    torch.manual_seed does for PyTorch's global generator. A uint64 per layer could not say
//    "continue where the previous layer stopped", which is what Linear, Embedding and GRU
//    need, and pushed seed arithmetic onto every caller.
//  - `Rng stream`, by value: a module that draws during forward (Dropout, and the layers
//    whose only randomness is their dropout) keeps the generator it is given. Callers pass
//    Rng(rng.next_u64()) to draw it from their own generator, or Rng(seed) for a fixed one.
//    By value because the stream must be exactly the one given (MultiheadAttention hands its
//    attention Rng(seed + 1), as it always did); from an Rng& it could only seed a new one.
// Layers that took a uint64 before this convention draw one seed and derive their inner
// streams from it as they always did (seed + 1, seed ^ φ), so that existing seeds keep their
// exact weights and dropout masks.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/gradcheck.hpp"
#include "autograd/variable.hpp"
#include "layers/hooks.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// Every parameter of this module and its submodules, in registration order.
  std::vector<NamedVariable> named_parameters() const;
  std::vector<Variable> parameters() const;
  std::vector<NamedVariable> named_buffers() const;
  /// Total number of trainable scalars.
  std::size_t parameter_count() const;
  /// This module ("") and every submodule by dotted name ("decoder.layers.0.self_attn"),
  /// parents before their children: for passes that convert layers by type (layers/quantized.hpp).
  std::vector<std::pair<std::string, Module*>> named_modules();

  /// Training mode (dropout active) for this module and all submodules.
  void train(bool training = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  void zero_grad();

  /// Parameters and buffers by dotted name.
  std::map<std::string, Array> state_dict() const;
  /// Copies values in by name. Any missing, unexpected or mis-shaped name is reported — all
  /// of them, in one Error — and nothing is changed unless everything fits.
  void load_state_dict(const std::map<std::string, Array>& state);
  /// Every random stream (dropout generators) of this module and its submodules by dotted
  /// name, as Rng::save_state text: with the weights and the optimizer, what a checkpoint
  /// needs for a resumed run to draw the same dropout masks as an uninterrupted one.
  std::map<std::string, std::string> random_state() const;
  /// Restores random_state(), accepting the legacy names of moved streams; every missing or
  /// unexpected name is reported in one Error.
  void load_random_state(const std::map<std::string, std::string>& state);

  /// state_dict() to a safetensors file, atomically; `metadata` goes into its header.
  void save(const std::string& path, const std::map<std::string, std::string>& metadata = {}) const;
  /// load_state_dict() from a safetensors file.
  void load(const std::string& path);

  /// Every hook point of this module and its submodules by dotted name
  /// ("decoder.layers.1.multihead_attn.weights"), in registration order (layers/hooks.hpp).
  std::vector<std::string> hook_point_names() const;
  /// Attaches `hook` to the point `name` for every forward pass that follows. Throws Error for
  /// an unknown name, listing the closest valid ones.
  HookId add_hook(const std::string& name, Hook hook);
  /// Detaches one hook added by add_hook on this module; throws Error for an unknown id.
  void remove_hook(HookId id);
  /// Detaches every hook of this module and its submodules.
  void clear_hooks();

 protected:
  /// Registers a trainable leaf and returns it (a handle sharing the stored variable).
  Variable register_parameter(const std::string& name, Array value);
  /// Registers saved, untrained state.
  Variable register_buffer(const std::string& name, Array value);
  /// Registers a random stream the module draws from (it must live as long as the module,
  /// e.g. a member), so that checkpoints can save and restore it.
  void register_random_stream(const std::string& name, Rng& stream);
  /// Registers a hook point (a member of the module, so it lives as long as the module).
  void register_hook_point(const std::string& name, HookPoint& point);
  /// Moves the hook point `child_name` of submodule `child` to this module as `name`: for a
  /// layer whose part computes what the layer reports (MultiheadAttention shows its
  /// DotProductAttention's weights as its own), so that one value has one name.
  void adopt_hook_point(Module& child, const std::string& child_name, const std::string& name);
  /// Registers a layer's Dropout as submodule "dropout", for the layers that kept their own
  /// stream "dropout_rng" before they held a Dropout: load_random_state still accepts that
  /// name for "dropout.dropout_rng", so checkpoints written before keep resuming.
  template <class D>
  std::shared_ptr<D> register_dropout(std::shared_ptr<D> dropout) {
    register_legacy_random_stream_name("dropout_rng", "dropout.dropout_rng");
    return register_module("dropout", std::move(dropout));
  }
  /// Registers a submodule; its names are prefixed with `name.`.
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  /// Throws when `name` is already a parameter, buffer or submodule of this module.
  void check_unique(const std::string& name) const;
  /// Makes load_random_state accept `legacy_name` for the stream now saved as `name` (both
  /// relative to this module).
  void register_legacy_random_stream_name(const std::string& legacy_name, const std::string& name);
  void collect(const std::string& prefix, bool buffers, std::vector<NamedVariable>& out) const;
  void collect_hook_points(const std::string& prefix, std::vector<std::pair<std::string, HookPoint*>>& out) const;

  std::vector<NamedVariable> parameters_;
  std::vector<NamedVariable> buffers_;
  std::vector<std::pair<std::string, Rng*>> random_streams_;
  std::vector<std::pair<std::string, HookPoint*>> hook_points_;
  std::vector<std::pair<std::string, std::string>> legacy_stream_names_;  // legacy name, current name
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

/// Hooks that are removed when this goes out of scope (also by an exception): for an
/// experiment that patches a model for a few passes and must leave it as it was.
class ScopedHooks {
 public:
  explicit ScopedHooks(Module& model) : model_(model) {}
  ~ScopedHooks() { remove_all(); }
  ScopedHooks(const ScopedHooks&) = delete;
  ScopedHooks& operator=(const ScopedHooks&) = delete;

  /// model.add_hook(name, hook), remembered for removal.
  HookId add(const std::string& name, Hook hook);
  /// Removes every hook added through this object now.
  void remove_all();

 private:
  Module& model_;
  std::vector<HookId> ids_;
};

}  // namespace qkv
