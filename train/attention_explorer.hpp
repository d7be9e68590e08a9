#pragma once
// The attention explorer: one self-contained HTML page (JavaScript and CSS inline, no network,
// opens from file://) showing every map of a SentenceAttention (train/attention_plots.hpp) —
// each layer x head of the cross-, encoder self- and decoder self-attention, or the Bahdanau
// model's one map — as a heatmap, as connection lines, or as highlighted tokens (hover or
// click a token: what it attends to lights up by weight). Pickers for the attention, layer and
// head ("all heads" overlays them in distinct colours), each query row's entropy, and a table
// of every head's mean entropy (and importance, when given). docs/attention_explorer.md shows it.
//
// The data sits in the page as JSON, in <script type="application/json" id="attention-data">,
// every "<" written as \u003c so no token can close the script; the page's script draws tokens
// with textContent only, so a token "<script>" shows as text. The JSON:
//
//   {"format": "qkv-attention-explorer", "version": 1,
//    "source": "a b c", "translation": "c b a",          // detokenized, for the title
//    "finished": true,                                   // the translation ended with <eos>
//    "groups": [{"title": "cross-attention",
//                "queries": "target", "keys": "source",  // which sentence labels each axis
//                "query_tokens": [...], "key_tokens": [...],
//                "layers": 2, "heads": 4,
//                "max_entropy": 1.79,                     // ln(number of keys): uniform attention
//                "maps": [{"name": "layer 1 head 1", "layer": 1, "head": 1,
//                          "weights": [[...], ...],       // [Tq][Tk], rounded to 1e-5
//                          "row_entropy": [...],           // [Tq], nats
//                          "mean_entropy": 0.42}, ...]}],  // layer 1's heads first
//    "head_importance": {                                  // optional, see below
//      "cross-attention": [[0.12, 0.80, 0.05, 0.31], [...]]}}
//
// head_importance is for a head-analysis program (ablation, gradient scores, ...) to fill: an
// object keyed by group title, each a list of layers, each a list of one number per head (any
// scale; the page shows the numbers and shades each by its share of the group's largest).
// Groups may be left out.
#include <string>

#include <nlohmann/json.hpp>

#include "train/attention_plots.hpp"

namespace qkv::train {

/// The page's JSON above. `data_spec` (train/data_spec.hpp) gives the sentences' text;
/// `head_importance` is null or the object above. Throws Error when head_importance names a
/// group the sentence lacks or does not hold one number per layer x head.
nlohmann::json attention_explorer_data(const SentenceAttention& sentence, const Vocabs& vocabs,
                                       const nlohmann::json& data_spec,
                                       const nlohmann::json& head_importance = nullptr);

/// The whole HTML page holding `data` (attention_explorer_data's JSON).
std::string attention_explorer_html(const nlohmann::json& data);

/// Writes the page of `sentence` to `file` atomically. Throws Error naming the file on failure.
void write_attention_explorer(const SentenceAttention& sentence, const Vocabs& vocabs, const nlohmann::json& data_spec,
                              const std::string& file, const nlohmann::json& head_importance = nullptr);

}  // namespace qkv::train
