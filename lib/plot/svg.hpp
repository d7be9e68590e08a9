#pragma once
// Dependency-free SVG plots for looking at what attention learned and how training went:
// attention heatmaps (one map, or a grid of every layer x head), source-to-target connection
// diagrams, and line charts of training curves.
//
// Each `*_svg` function returns the whole document as a string; `write_svg` puts it on disk
// atomically. Every label goes through `xml_escape`, so any token (`<unk>`, `&`, `"`, `▁de`,
// even bytes that are not valid UTF-8) is safe to pass.
//
//   qkv::write_svg("attention.svg", qkv::attention_heatmap_svg(
//       {.weights = attn, .queries = target_tokens, .keys = source_tokens, .title = "epoch 10"}));
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "lib/numerics/tensor.hpp"

namespace qkv {

/// One attention matrix with its token labels.
struct AttentionMap {
  Array weights;                     // [Tq, Tk]: row i is query i's distribution over the keys
  std::vector<std::string> queries;  // Tq labels, down the left (the targets of a connection diagram)
  std::vector<std::string> keys;     // Tk labels, along the top (the sources)
  std::string title;
};

/// A heatmap of one attention matrix: viridis cells on a fixed [0, 1] scale (so maps compare),
/// keys along the top (rotated when they do not fit a column), queries down the left, the
/// entropy of each query row in nats beside it, a colour bar, and a legend giving the entropy
/// of uniform attention, ln(Tk). Cells carry a tooltip with their exact weight.
///
/// Throws ShapeError if the weights are not [Tq, Tk] with Tq query and Tk key labels, and Error
/// if they are empty, negative, not finite, or a row sums to more than 1 (scores, not softmax).
std::string attention_heatmap_svg(const AttentionMap& map);

/// Every layer x head of a transformer on one sheet, sharing one colour scale.
struct AttentionGrid {
  std::vector<Array> weights;        // one [Tq, Tk] matrix per panel, row by row: layer 0's heads first
  std::vector<std::string> titles;   // one per matrix, e.g. "layer 0 · head 1"
  std::vector<std::string> queries;  // Tq labels, shared by every panel
  std::vector<std::string> keys;     // Tk labels, shared by every panel
  std::size_t columns = 1;           // panels per row: the number of heads
  std::string title;
};

/// The grid as heatmaps drawn like `attention_heatmap_svg`, smaller. Throws as it does, naming
/// the panel, and also when the titles do not match the matrices or `columns` is 0.
std::string attention_grid_svg(const AttentionGrid& grid);

/// Source tokens (keys) in a row at the top, target tokens (queries) in a row below, and a line
/// from each target to each source whose width and opacity grow with the weight. Weights below
/// 0.02 are not drawn. Validates `map` like `attention_heatmap_svg`.
std::string attention_connections_svg(const AttentionMap& map);

/// One named curve of a line chart.
struct Series {
  std::string name;
  std::vector<double> x;  // e.g. epochs, steps, d_k
  std::vector<double> y;  // same length; NaN or infinite values leave a gap in the line
  bool dashed = false;    // a reference curve, e.g. the theoretical value beside a measurement
};

struct LineChart {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<Series> series;
  bool log_x = false;  // e.g. d_k = 8, 16, ..., 1024
  bool log_y = false;  // e.g. a loss falling over decades
  // Where to label the x axis instead of at round numbers, e.g. at the d_k values measured
  // ({8, 16, ..., 1024}); empty for automatic ticks.
  std::vector<double> x_ticks;
};

/// Axes with round-number ticks and light grid lines, one colour per series (markers on short
/// series), and a legend to the right. Throws Error naming the series when x and y differ in
/// length, when there is nothing finite to draw, or when a log axis meets a value <= 0.
std::string line_chart_svg(const LineChart& chart);

/// Writes `svg` to `path` atomically: a temporary file beside it, flushed, then renamed over
/// it, so a reader never sees half a plot. Throws Error naming the file on any failure.
void write_svg(const std::string& path, const std::string& svg);

/// Text made safe for XML content and attribute values: `& < > " '` become entities, invalid
/// UTF-8 and control characters become U+FFFD (an XML parser rejects both).
std::string xml_escape(std::string_view text);

/// Round-number axis ticks covering [low, high]: steps of 1, 2 or 5 x 10^k, at most
/// `max_ticks` of them, the first <= low and the last >= high. A zero-width range is widened.
std::vector<double> nice_ticks(double low, double high, std::size_t max_ticks = 7);

/// The viridis colour of `value` clamped to [0, 1], as "#rrggbb" (256-entry table).
std::string viridis(double value);

}  // namespace qkv
