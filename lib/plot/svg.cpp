#include "lib/plot/svg.hpp"

#include "lib/numerics/atomic_file.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

// matplotlib's viridis (CC0, van der Walt & Smith), 256 entries: perceptually uniform and
// readable in grey and by the colour-blind, so a brighter cell always means more weight.
constexpr std::array<const char*, 256> kViridis = {
    "#440154", "#440256", "#450457", "#450559", "#46075a", "#46085c", "#460a5d", "#460b5e",
    "#470d60", "#470e61", "#471063", "#471164", "#471365", "#481467", "#481668", "#481769",
    "#48186a", "#481a6c", "#481b6d", "#481c6e", "#481d6f", "#481f70", "#482071", "#482173",
    "#482374", "#482475", "#482576", "#482677", "#482878", "#482979", "#472a7a", "#472c7a",
    "#472d7b", "#472e7c", "#472f7d", "#46307e", "#46327e", "#46337f", "#463480", "#453581",
    "#453781", "#453882", "#443983", "#443a83", "#443b84", "#433d84", "#433e85", "#423f85",
    "#424086", "#424186", "#414287", "#414487", "#404588", "#404688", "#3f4788", "#3f4889",
    "#3e4989", "#3e4a89", "#3e4c8a", "#3d4d8a", "#3d4e8a", "#3c4f8a", "#3c508b", "#3b518b",
    "#3b528b", "#3a538b", "#3a548c", "#39558c", "#39568c", "#38588c", "#38598c", "#375a8c",
    "#375b8d", "#365c8d", "#365d8d", "#355e8d", "#355f8d", "#34608d", "#34618d", "#33628d",
    "#33638d", "#32648e", "#32658e", "#31668e", "#31678e", "#31688e", "#30698e", "#306a8e",
    "#2f6b8e", "#2f6c8e", "#2e6d8e", "#2e6e8e", "#2e6f8e", "#2d708e", "#2d718e", "#2c718e",
    "#2c728e", "#2c738e", "#2b748e", "#2b758e", "#2a768e", "#2a778e", "#2a788e", "#29798e",
    "#297a8e", "#297b8e", "#287c8e", "#287d8e", "#277e8e", "#277f8e", "#27808e", "#26818e",
    "#26828e", "#26828e", "#25838e", "#25848e", "#25858e", "#24868e", "#24878e", "#23888e",
    "#23898e", "#238a8d", "#228b8d", "#228c8d", "#228d8d", "#218e8d", "#218f8d", "#21908d",
    "#21918c", "#20928c", "#20928c", "#20938c", "#1f948c", "#1f958b", "#1f968b", "#1f978b",
    "#1f988b", "#1f998a", "#1f9a8a", "#1e9b8a", "#1e9c89", "#1e9d89", "#1f9e89", "#1f9f88",
    "#1fa088", "#1fa188", "#1fa187", "#1fa287", "#20a386", "#20a486", "#21a585", "#21a685",
    "#22a785", "#22a884", "#23a983", "#24aa83", "#25ab82", "#25ac82", "#26ad81", "#27ad81",
    "#28ae80", "#29af7f", "#2ab07f", "#2cb17e", "#2db27d", "#2eb37c", "#2fb47c", "#31b57b",
    "#32b67a", "#34b679", "#35b779", "#37b878", "#38b977", "#3aba76", "#3bbb75", "#3dbc74",
    "#3fbc73", "#40bd72", "#42be71", "#44bf70", "#46c06f", "#48c16e", "#4ac16d", "#4cc26c",
    "#4ec36b", "#50c46a", "#52c569", "#54c568", "#56c667", "#58c765", "#5ac864", "#5cc863",
    "#5ec962", "#60ca60", "#63cb5f", "#65cb5e", "#67cc5c", "#69cd5b", "#6ccd5a", "#6ece58",
    "#70cf57", "#73d056", "#75d054", "#77d153", "#7ad151", "#7cd250", "#7fd34e", "#81d34d",
    "#84d44b", "#86d549", "#89d548", "#8bd646", "#8ed645", "#90d743", "#93d741", "#95d840",
    "#98d83e", "#9bd93c", "#9dd93b", "#a0da39", "#a2da37", "#a5db36", "#a8db34", "#aadc32",
    "#addc30", "#b0dd2f", "#b2dd2d", "#b5de2b", "#b8de29", "#bade28", "#bddf26", "#c0df25",
    "#c2df23", "#c5e021", "#c8e020", "#cae11f", "#cde11d", "#d0e11c", "#d2e21b", "#d5e21a",
    "#d8e219", "#dae319", "#dde318", "#dfe318", "#e2e418", "#e5e419", "#e7e419", "#eae51a",
    "#ece51b", "#efe51c", "#f1e51d", "#f4e61e", "#f6e620", "#f8e621", "#fbe723", "#fde725",
};

// Tableau 10, matplotlib's default cycle: distinct hues for the series of a line chart.
constexpr std::array<const char*, 10> kSeriesColours = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                                        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

constexpr const char* kFontFamily = "DejaVu Sans, Helvetica, Arial, sans-serif";
constexpr const char* kGreyText = "#444";
// SVG cannot measure text, so layout estimates a width from the number of characters: DejaVu
// Sans averages under 0.62 em per character. Erring wide costs margin; erring narrow overlaps.
constexpr double kCharWidth = 0.62;
constexpr double kMargin = 16;
constexpr double kTitleFont = 16;
constexpr double kSmallFont = 11;
// Longer token labels are cut (with "…") so one odd token cannot push the plot off the page;
// the cell tooltips keep the full text.
constexpr std::size_t kMaxLabelChars = 20;
constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Locale-independent text for `value` with `decimals` decimals.
std::string fixed(double value, int decimals) {
  char buffer[64];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed, decimals);
  if (error != std::errc()) return "0";
  std::string text(buffer, end);
  if (text.find_first_not_of("-0.") == std::string::npos) text = decimals > 0 ? "0." + std::string(decimals, '0') : "0";
  return text;
}

// As `fixed`, without trailing zeros: coordinates and tick labels ("0.5", "2", not "2.00").
std::string num(double value, int decimals = 2) {
  std::string text = fixed(value, decimals);
  if (text.find('.') != std::string::npos) {
    text.erase(text.find_last_not_of('0') + 1);
    if (text.back() == '.') text.pop_back();
  }
  return text;
}

// Valid UTF-8 without the control characters XML 1.0 forbids; anything else becomes U+FFFD,
// one per bad byte, so the document always parses.
std::string clean_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      const bool allowed = lead >= 0x20 || lead == '\t' || lead == '\n' || lead == '\r';
      if (allowed) out += static_cast<char>(lead);
      else out += kReplacementCharacter;
      ++i;
      continue;
    }
    std::size_t length = 0;
    std::uint32_t code_point = 0, smallest = 0;
    if ((lead & 0xE0) == 0xC0) length = 2, code_point = lead & 0x1F, smallest = 0x80;
    else if ((lead & 0xF0) == 0xE0) length = 3, code_point = lead & 0x0F, smallest = 0x800;
    else if ((lead & 0xF8) == 0xF0) length = 4, code_point = lead & 0x07, smallest = 0x10000;
    bool valid = length > 0 && i + length <= text.size();
    for (std::size_t k = 1; valid && k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      valid = (next & 0xC0) == 0x80;
      code_point = (code_point << 6) | (next & 0x3F);
    }
    // Overlong forms, surrogates and the two non-characters XML excludes are not text.
    valid = valid && code_point >= smallest && code_point <= 0x10FFFF && (code_point < 0xD800 || code_point > 0xDFFF) &&
            code_point != 0xFFFE && code_point != 0xFFFF;
    if (valid) {
      out.append(text.substr(i, length));
      i += length;
    } else {
      out += kReplacementCharacter;
      ++i;
    }
  }
  return out;
}

std::size_t code_points(std::string_view utf8) {
  return static_cast<std::size_t>(
      std::count_if(utf8.begin(), utf8.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

double text_width(std::string_view utf8, double font_size) {
  return static_cast<double>(code_points(utf8)) * font_size * kCharWidth;
}

// A token label ready for layout: clean UTF-8, at most kMaxLabelChars characters.
std::string short_label(const std::string& label) {
  std::string clean = clean_utf8(label);
  if (code_points(clean) <= kMaxLabelChars) return clean;
  std::size_t kept = 0, cut = 0;
  while (cut < clean.size()) {
    if ((static_cast<unsigned char>(clean[cut]) & 0xC0) != 0x80 && kept++ == kMaxLabelChars - 1) break;
    ++cut;
  }
  return clean.substr(0, cut) + "…";
}

std::vector<std::string> short_labels(const std::vector<std::string>& labels) {
  std::vector<std::string> out;
  out.reserve(labels.size());
  for (const auto& label : labels) out.push_back(short_label(label));
  return out;
}

double widest(const std::vector<std::string>& labels, double font_size) {
  double width = 0;
  for (const auto& label : labels) width = std::max(width, text_width(label, font_size));
  return width;
}

// Collects elements; `document` wraps them in the <svg> root once the size is known.
class SvgBuilder {
 public:
  // Text content is always escaped here, so no caller can forget to.
  void text(double x, double y, std::string_view content, double size, std::string_view attributes = {},
            std::string_view tooltip = {}) {
    body_ += "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" font-size=\"" + num(size) + "\"";
    if (!attributes.empty()) body_ += " " + std::string(attributes);
    body_ += ">";
    if (!tooltip.empty()) body_ += "<title>" + xml_escape(tooltip) + "</title>";
    body_ += xml_escape(content) + "</text>\n";
  }
  void rect(double x, double y, double width, double height, std::string_view attributes,
            std::string_view tooltip = {}) {
    body_ += "<rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(width) + "\" height=\"" + num(height) +
             "\" " + std::string(attributes);
    close_with_tooltip("rect", tooltip);
  }
  void line(double x1, double y1, double x2, double y2, std::string_view attributes, std::string_view tooltip = {}) {
    body_ += "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" + num(y2) + "\" " +
             std::string(attributes);
    close_with_tooltip("line", tooltip);
  }
  void circle(double x, double y, double radius, std::string_view attributes) {
    body_ += "<circle cx=\"" + num(x) + "\" cy=\"" + num(y) + "\" r=\"" + num(radius) + "\" " +
             std::string(attributes) + "/>\n";
  }
  // Markup built by the caller from escaped parts (groups, paths, gradients).
  void raw(std::string_view markup) { body_ += markup; }

  std::string document(double width, double height) const {
    const std::string w = num(std::ceil(width), 0), h = num(std::ceil(height), 0);
    return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + w +
           "\" height=\"" + h + "\" viewBox=\"0 0 " + w + " " + h + "\" font-family=\"" + kFontFamily + "\">\n" +
           "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n" + body_ + "</svg>\n";
  }

 private:
  void close_with_tooltip(std::string_view tag, std::string_view tooltip) {
    if (tooltip.empty()) {
      body_ += "/>\n";
    } else {
      body_ += "><title>" + xml_escape(tooltip) + "</title></" + std::string(tag) + ">\n";
    }
  }
  std::string body_;
};

void draw_title(SvgBuilder& svg, const std::string& title) {
  if (!title.empty()) svg.text(kMargin, kMargin + kTitleFont * 0.8, title, kTitleFont, "font-weight=\"bold\"");
}

double title_band(const std::string& title) { return title.empty() ? 0 : kTitleFont + 14; }

double title_width(const std::string& title) { return text_width(clean_utf8(title), kTitleFont * 1.1); }

// ---- attention ------------------------------------------------------------------------------

// Throws unless `weights` is a non-empty [Tq, Tk] matrix of probabilities matching the labels.
// `where` names the panel of a grid ("" for a single map).
void check_attention(const char* op, const std::string& where, const Array& weights, std::size_t query_count,
                     std::size_t key_count) {
  const Shape shape = shape_of(weights);
  const std::string name = "weights" + where;
  check_shape(shape.size() == 2, op, [&] { return name + " must be a [Tq, Tk] matrix, got " + to_string(shape); });
  check_arg(weights.size() > 0, op, [&] { return name + " are " + to_string(shape) + ": there is nothing to draw"; });
  check_shape(shape[0] == query_count && shape[1] == key_count, op, [&] {
    return name + " are " + to_string(shape) + " ([Tq, Tk]) but " + std::to_string(query_count) + " query labels and " +
           std::to_string(key_count) + " key labels were given";
  });
  const real* data = weights.data();  // [Tq, Tk]
  for (std::size_t i = 0; i < shape[0]; ++i) {
    double sum = 0;
    for (std::size_t j = 0; j < shape[1]; ++j) {
      const double value = data[i * shape[1] + j];
      check_arg(std::isfinite(value) && value >= 0, op, [&] {
        return name + "[" + std::to_string(i) + ", " + std::to_string(j) + "] is " + num(value, 6) +
               ": attention weights must be finite and >= 0";
      });
      sum += value;
    }
    // Softmax rows sum to 1 up to rounding; masked or padded rows may sum to less.
    check_arg(sum <= 1 + 1e-3, op, [&] {
      return "row " + std::to_string(i) + " of the " + name + " sums to " + num(sum, 4) +
             ": attention rows sum to at most 1 (pass the softmax output, not the scores)";
    });
  }
}

double row_entropy(const real* row, std::size_t count) {
  double entropy = 0;
  for (std::size_t j = 0; j < count; ++j)
    if (row[j] > 0) entropy -= double(row[j]) * std::log(double(row[j]));
  return entropy;
}

// Where everything of one heatmap panel goes; every panel of a grid shares it.
struct HeatmapLayout {
  std::size_t rows = 0, columns = 0;  // Tq, Tk
  double cell = 0;                    // side of one square cell
  double font = 0;                    // token labels and entropies
  std::size_t label_stride = 1;       // label every n-th row/column when cells are thinner than text
  bool rotate_keys = false;           // keys read upwards when wider than a column
  bool values_in_cells = false;       // print each weight inside its cell (large cells only)
  double title_height = 0;            // band for a grid panel's title
  double query_width = 0;             // label column left of the cells
  double key_height = 0;              // label band above the cells
  double entropy_width = 0;           // entropy column right of the cells
  double width = 0, height = 0;       // the whole panel
  double cells_x() const { return query_width; }
  double cells_y() const { return title_height + key_height; }
};

constexpr double kPanelTitleFont = 12;

HeatmapLayout layout_heatmap(std::size_t rows, std::size_t columns, const std::vector<std::string>& queries,
                             const std::vector<std::string>& keys, double size_budget, double largest_cell,
                             double panel_title_width) {
  HeatmapLayout layout;
  layout.rows = rows;
  layout.columns = columns;
  layout.cell = std::clamp(size_budget / double(std::max(rows, columns)), 3.0, largest_cell);
  layout.font = std::clamp(layout.cell * 0.8, 8.0, 12.0);
  // Labels need about 1.15 font sizes of height each; skip some rather than overprint.
  layout.label_stride = static_cast<std::size_t>(std::ceil(layout.font * 1.15 / layout.cell));
  layout.values_in_cells = layout.cell >= 30;
  layout.title_height = panel_title_width > 0 ? kPanelTitleFont + 8 : 0;
  layout.query_width = widest(queries, layout.font) + 8;
  const double key_width = widest(keys, layout.font);
  layout.rotate_keys = key_width > layout.cell - 4;
  layout.key_height = (layout.rotate_keys ? key_width : layout.font) + 8;
  layout.entropy_width = text_width("0.00", layout.font) + 10;
  layout.width = std::max(layout.query_width + double(columns) * layout.cell + layout.entropy_width, panel_title_width);
  layout.height = layout.cells_y() + double(rows) * layout.cell;
  return layout;
}

// Token labels as drawn on the axes (shortened) and as shown in tooltips (whole), all clean UTF-8.
struct TokenLabels {
  std::vector<std::string> queries, keys;
  std::vector<std::string> full_queries, full_keys;

  TokenLabels(const std::vector<std::string>& query_labels, const std::vector<std::string>& key_labels)
      : queries(short_labels(query_labels)), keys(short_labels(key_labels)) {
    for (const auto& label : query_labels) full_queries.push_back(clean_utf8(label));
    for (const auto& label : key_labels) full_keys.push_back(clean_utf8(label));
  }
};

void draw_heatmap(SvgBuilder& svg, double x0, double y0, const HeatmapLayout& layout, const Array& weights,
                  const TokenLabels& labels, const std::string& panel_title) {
  const double cells_x = x0 + layout.cells_x(), cells_y = y0 + layout.cells_y(), cell = layout.cell;
  const std::size_t rows = layout.rows, columns = layout.columns;
  if (!panel_title.empty())
    svg.text(x0, y0 + kPanelTitleFont, panel_title, kPanelTitleFont, "font-weight=\"bold\"");

  const real* data = weights.data();  // [Tq, Tk]
  // crispEdges keeps anti-aliasing seams from showing between neighbouring cells.
  svg.raw("<g shape-rendering=\"crispEdges\">\n");
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < columns; ++j) {
      const double value = data[i * columns + j];
      svg.rect(cells_x + double(j) * cell, cells_y + double(i) * cell, cell, cell,
               "class=\"cell\" fill=\"" + viridis(value) + "\"",
               labels.full_queries[i] + " → " + labels.full_keys[j] + ": " + fixed(value, 4));
    }
  svg.rect(cells_x, cells_y, double(columns) * cell, double(rows) * cell, "fill=\"none\" stroke=\"#999\"");
  svg.raw("</g>\n");

  if (layout.values_in_cells) {
    const double value_font = cell * 0.3;
    for (std::size_t i = 0; i < rows; ++i)
      for (std::size_t j = 0; j < columns; ++j) {
        const double value = data[i * columns + j];
        if (value < 0.005) continue;  // a sea of "0.00" hides the weights that matter
        // Dark text on the bright (yellow-green) end of viridis, white on the dark end.
        const char* ink = value > 0.55 ? "#000" : "#fff";
        svg.text(cells_x + (double(j) + 0.5) * cell, cells_y + (double(i) + 0.5) * cell + value_font * 0.35,
                 fixed(value, 2), value_font, std::string("text-anchor=\"middle\" fill=\"") + ink + "\"");
      }
  }

  const double font = layout.font, baseline_shift = font * 0.35;
  for (std::size_t i = 0; i < rows; i += layout.label_stride)
    svg.text(cells_x - 5, cells_y + (double(i) + 0.5) * cell + baseline_shift, labels.queries[i], font,
             "class=\"query\" text-anchor=\"end\"");
  for (std::size_t j = 0; j < columns; j += layout.label_stride) {
    const double x = cells_x + (double(j) + 0.5) * cell, y = cells_y - 5;
    if (layout.rotate_keys) {
      const double shifted = x + baseline_shift;
      svg.text(shifted, y, labels.keys[j], font, "class=\"key\" transform=\"rotate(-90 " + num(shifted) + " " + num(y) + ")\"");
    } else {
      svg.text(x, y, labels.keys[j], font, "class=\"key\" text-anchor=\"middle\"");
    }
  }

  const double entropy_x = cells_x + double(columns) * cell + layout.entropy_width - 2;
  svg.text(entropy_x, cells_y - 5, "H", font, "font-style=\"italic\" text-anchor=\"end\" fill=\"#444\"",
           "entropy of each query row, in nats");
  for (std::size_t i = 0; i < rows; i += layout.label_stride)
    svg.text(entropy_x, cells_y + (double(i) + 0.5) * cell + baseline_shift, fixed(row_entropy(data + i * columns, columns), 2),
             font, "class=\"entropy\" text-anchor=\"end\" fill=\"#444\"");
}

constexpr double kColourBarWidth = 14;

// A vertical bar from 0 (bottom) to 1 (top) with ticks at quarters; about 50 px wide in all.
void draw_colour_bar(SvgBuilder& svg, double x, double y, double height) {
  std::string gradient = "<defs><linearGradient id=\"qkv-viridis\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  constexpr int kStops = 16;
  for (int stop = 0; stop <= kStops; ++stop)
    gradient += "<stop offset=\"" + num(double(stop) / kStops, 4) + "\" stop-color=\"" + viridis(double(stop) / kStops) + "\"/>";
  svg.raw(gradient + "</linearGradient></defs>\n");
  svg.text(x, y - 14, "weight", kSmallFont, std::string("fill=\"") + kGreyText + "\"");
  svg.rect(x, y, kColourBarWidth, height, "fill=\"url(#qkv-viridis)\" stroke=\"#999\"");
  for (const double tick : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    const double tick_y = y + (1 - tick) * height;
    svg.line(x + kColourBarWidth, tick_y, x + kColourBarWidth + 4, tick_y, "stroke=\"#666\"");
    svg.text(x + kColourBarWidth + 7, tick_y + kSmallFont * 0.35, num(tick), kSmallFont);
  }
}

// One heatmap or a grid of them, sharing labels, layout and one colour bar.
std::string render_heatmaps(const std::vector<const Array*>& matrices, const std::vector<std::string>& panel_titles,
                            const std::vector<std::string>& query_labels, const std::vector<std::string>& key_labels,
                            std::size_t columns, const std::string& title, bool grid) {
  const TokenLabels labels(query_labels, key_labels);
  double panel_title_width = 0;
  for (const auto& panel_title : panel_titles)
    panel_title_width = std::max(panel_title_width, text_width(clean_utf8(panel_title), kPanelTitleFont * 1.1));
  const std::size_t rows = labels.queries.size(), key_count = labels.keys.size();
  // A single map gets large cells; a grid's panels are kept small enough to sit side by side.
  const HeatmapLayout layout =
      grid ? layout_heatmap(rows, key_count, labels.queries, labels.keys, 220, 22, panel_title_width)
           : layout_heatmap(rows, key_count, labels.queries, labels.keys, 520, 40, 0);

  SvgBuilder svg;
  draw_title(svg, title);
  constexpr double kGap = 28;
  const double panels_y = kMargin + title_band(title);
  const std::size_t used_columns = std::min(columns, matrices.size());
  const std::size_t panel_rows = (matrices.size() + columns - 1) / columns;
  for (std::size_t p = 0; p < matrices.size(); ++p) {
    const double x = kMargin + double(p % columns) * (layout.width + kGap);
    const double y = panels_y + double(p / columns) * (layout.height + kGap);
    draw_heatmap(svg, x, y, layout, *matrices[p], labels, grid ? panel_titles[p] : std::string());
  }
  const double panels_right = kMargin + double(used_columns) * layout.width + double(used_columns - 1) * kGap;
  const double panels_bottom = panels_y + double(panel_rows) * layout.height + double(panel_rows - 1) * kGap;

  const double bar_x = panels_right + 24, bar_y = panels_y + layout.cells_y();
  const double bar_height = std::max(double(rows) * layout.cell, 120.0);
  draw_colour_bar(svg, bar_x, bar_y, bar_height);

  const std::string legend_lines[] = {
      "H: entropy of each query row, in nats",
      "uniform over Tk = " + std::to_string(key_count) + " keys: max ln " + std::to_string(key_count) + " = " +
          fixed(std::log(double(key_count)), 2),
  };
  double y = std::max(panels_bottom, bar_y + bar_height) + 8;
  double legend_width = 0;
  for (const auto& line : legend_lines) {
    y += kSmallFont + 5;
    svg.text(kMargin, y, line, kSmallFont, std::string("class=\"legend\" fill=\"") + kGreyText + "\"");
    legend_width = std::max(legend_width, text_width(line, kSmallFont));
  }
  const double width = std::max({bar_x + 50, kMargin + legend_width, kMargin + title_width(title)}) + kMargin;
  return svg.document(width, y + kMargin);
}

// ---- line charts ----------------------------------------------------------------------------

// One axis: its domain (rounded out to ticks), where the domain lands in pixels, and the ticks.
struct Axis {
  double low = 0, high = 1;
  bool log = false;
  std::vector<double> ticks;        // labelled
  std::vector<double> minor_ticks;  // unlabelled: 2..9 x 10^k between the decades of a log axis
  double pixel_low = 0, pixel_high = 1;

  double to_pixel(double value) const {
    const double t = log ? (std::log10(value) - std::log10(low)) / (std::log10(high) - std::log10(low))
                         : (value - low) / (high - low);
    return pixel_low + t * (pixel_high - pixel_low);
  }
};

// 1, 2 and 5 times powers of ten: the round numbers of a log axis.
double round_down_125(double value) {
  const double decade = std::pow(10.0, std::floor(std::log10(value) + 1e-12));
  for (const double m : {5.0, 2.0, 1.0})
    if (m * decade <= value * (1 + 1e-12)) return m * decade;
  return decade;
}
double round_up_125(double value) {
  const double decade = std::pow(10.0, std::floor(std::log10(value) - 1e-12));
  for (const double m : {1.0, 2.0, 5.0, 10.0})
    if (m * decade >= value * (1 - 1e-12)) return m * decade;
  return 10 * decade;
}

Axis make_axis(double low, double high, bool log, std::size_t max_ticks, const std::vector<double>& chosen_ticks,
               bool integer_data) {
  Axis axis;
  axis.log = log;
  if (!chosen_ticks.empty()) {
    axis.ticks = chosen_ticks;
    std::sort(axis.ticks.begin(), axis.ticks.end());
    axis.low = std::min(low, axis.ticks.front());
    axis.high = std::max(high, axis.ticks.back());
    if (axis.high == axis.low) axis.high = log ? axis.low * 10 : axis.low + 1;
    return axis;
  }
  if (!log) {
    axis.ticks = nice_ticks(low, high, max_ticks);
    // Epochs and steps are whole numbers: ask for fewer ticks rather than label "2.5".
    while (integer_data && max_ticks > 2 && axis.ticks[1] - axis.ticks[0] < 1)
      axis.ticks = nice_ticks(low, high, --max_ticks);
    axis.low = axis.ticks.front();
    axis.high = axis.ticks.back();
    return axis;
  }
  // The domain is rounded out to 1-2-5 numbers; ticks at all of those when they fit, else at the
  // powers of ten inside it, every `stride`-th one over many decades.
  axis.low = round_down_125(low);
  axis.high = round_up_125(high);
  if (axis.high <= axis.low) axis.high = round_up_125(axis.low * 1.5);
  const auto inside = [&](double tick) { return tick >= axis.low * (1 - 1e-12) && tick <= axis.high * (1 + 1e-12); };
  const double first_decade = std::floor(std::log10(axis.low) + 1e-12);
  const double last_decade = std::floor(std::log10(axis.high) + 1e-12);
  for (double decade = first_decade; decade <= last_decade; ++decade)
    for (const double m : {1.0, 2.0, 5.0})
      if (inside(m * std::pow(10.0, decade))) axis.ticks.push_back(m * std::pow(10.0, decade));
  if (axis.ticks.size() <= max_ticks) return axis;
  std::vector<double> decades;
  for (double decade = std::ceil(std::log10(axis.low) - 1e-12); decade <= last_decade; ++decade)
    decades.push_back(std::pow(10.0, decade));
  const std::size_t stride = (decades.size() + max_ticks - 1) / max_ticks;
  axis.ticks.clear();
  for (std::size_t k = 0; k < decades.size(); k += stride) axis.ticks.push_back(decades[k]);
  // Minor ticks show where 2, 3, ... 9 fall, so a value between decades can still be read off.
  if (stride == 1)
    for (double decade = first_decade; decade <= last_decade; ++decade)
      for (int m = 2; m <= 9; ++m)
        if (inside(m * std::pow(10.0, decade))) axis.minor_ticks.push_back(m * std::pow(10.0, decade));
  return axis;
}

std::string log_tick_label(double value) {
  if (value >= 1e-4 && value < 1e6) return num(value, 6);
  const double exponent = std::floor(std::log10(value) + 1e-12);
  const double mantissa = value / std::pow(10.0, exponent);
  return num(mantissa, 1) + "e" + num(exponent, 0);
}

std::vector<std::string> tick_labels(const Axis& axis, bool chosen) {
  std::vector<std::string> labels;
  if (axis.log || chosen) {
    for (const double tick : axis.ticks) labels.push_back(log_tick_label(tick));
    return labels;
  }
  const double step = axis.ticks.size() > 1 ? axis.ticks[1] - axis.ticks[0] : 1;
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  for (const double tick : axis.ticks) labels.push_back(fixed(tick, decimals));
  return labels;
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------

std::string xml_escape(std::string_view text) {
  const std::string clean = clean_utf8(text);
  std::string out;
  out.reserve(clean.size());
  for (const char c : clean) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string viridis(double value) {
  const double clamped = std::isnan(value) ? 0.0 : std::clamp(value, 0.0, 1.0);
  return kViridis[static_cast<std::size_t>(std::lround(clamped * 255))];
}

std::vector<double> nice_ticks(double low, double high, std::size_t max_ticks) {
  check_arg(std::isfinite(low) && std::isfinite(high) && low <= high, "nice_ticks",
            [&] { return "need finite low <= high, got [" + num(low, 6) + ", " + num(high, 6) + "]"; });
  check_arg(max_ticks >= 2, "nice_ticks",
            [&] { return "max_ticks must be at least 2, got " + std::to_string(max_ticks); });
  if (high == low) {
    const double pad = low == 0 ? 1 : std::abs(low) * 0.1;
    low -= pad;
    high += pad;
  }
  double magnitude = std::pow(10.0, std::floor(std::log10((high - low) / double(max_ticks - 1))));
  for (;;) {
    for (const double multiple : {1.0, 2.0, 5.0}) {
      const double step = multiple * magnitude;
      // The small tolerance keeps 0.3 / 0.1 = 2.9999999999999996 from adding a tick.
      const double first = std::floor(low / step + 1e-9), last = std::ceil(high / step - 1e-9);
      if (last - first + 1 > double(max_ticks)) continue;
      std::vector<double> ticks;
      for (double k = first; k <= last; ++k) ticks.push_back(k == 0 ? 0.0 : k * step);
      return ticks;
    }
    magnitude *= 10;
  }
}

void write_svg(const std::string& path, const std::string& svg) {
  check_arg(!path.empty(), "write_svg", "the path is empty");
  try {
    write_file_atomically(path, svg);
  } catch (const Error& e) {
    throw Error(std::string("write_svg: ") + e.what());
  }
}

std::string attention_heatmap_svg(const AttentionMap& map) {
  check_attention("attention_heatmap_svg", "", map.weights, map.queries.size(), map.keys.size());
  return render_heatmaps({&map.weights}, {}, map.queries, map.keys, 1, map.title, false);
}

std::string attention_grid_svg(const AttentionGrid& grid) {
  constexpr const char* op = "attention_grid_svg";
  check_arg(!grid.weights.empty(), op, "no matrices to draw (weights is empty)");
  check_arg(grid.columns > 0, op, "columns must be at least 1");
  check_shape(grid.titles.size() == grid.weights.size(), op, [&] {
    return std::to_string(grid.weights.size()) + " matrices but " + std::to_string(grid.titles.size()) + " titles";
  });
  std::vector<const Array*> matrices;
  for (std::size_t p = 0; p < grid.weights.size(); ++p) {
    check_attention(op, " of panel " + std::to_string(p) + " ('" + grid.titles[p] + "')", grid.weights[p],
                    grid.queries.size(), grid.keys.size());
    matrices.push_back(&grid.weights[p]);
  }
  return render_heatmaps(matrices, grid.titles, grid.queries, grid.keys, grid.columns, grid.title, true);
}

std::string attention_connections_svg(const AttentionMap& map) {
  constexpr double kFont = 13, kLinkHeight = 170, kSmallestDrawn = 0.02, kWidestLine = 6;
  check_attention("attention_connections_svg", "", map.weights, map.queries.size(), map.keys.size());
  const TokenLabels labels(map.queries, map.keys);
  const std::vector<std::string>&sources = labels.keys, &targets = labels.queries;

  // Each token gets a slot as wide as its label, so rows of long and short tokens both fit.
  const auto slot_centres = [&](const std::vector<std::string>& labels, double& row_width) {
    std::vector<double> centres;
    row_width = 0;
    for (const auto& label : labels) {
      const double slot = std::max(text_width(label, kFont) + 14, 30.0);
      centres.push_back(row_width + slot / 2);
      row_width += slot;
    }
    return centres;
  };
  double source_width = 0, target_width = 0;
  std::vector<double> source_x = slot_centres(sources, source_width);
  std::vector<double> target_x = slot_centres(targets, target_width);
  const double caption_width = text_width("queries", kSmallFont) + 14;
  const double row_width = std::max(source_width, target_width);
  const double row_left = kMargin + caption_width;
  for (double& x : source_x) x += row_left + (row_width - source_width) / 2;
  for (double& x : target_x) x += row_left + (row_width - target_width) / 2;

  SvgBuilder svg;
  draw_title(svg, map.title);
  const double source_baseline = kMargin + title_band(map.title) + kFont;
  const double source_anchor = source_baseline + 8, target_anchor = source_anchor + kLinkHeight;
  const double target_baseline = target_anchor + 8 + kFont;

  struct Link {
    double weight;
    std::size_t target, source;
  };
  std::vector<Link> links;
  const real* data = map.weights.data();  // [Tq, Tk]
  for (std::size_t i = 0; i < targets.size(); ++i)
    for (std::size_t j = 0; j < sources.size(); ++j)
      if (data[i * sources.size() + j] >= kSmallestDrawn) links.push_back({data[i * sources.size() + j], i, j});
  // Heavy links last, so they are drawn over the faint ones.
  std::stable_sort(links.begin(), links.end(), [](const Link& a, const Link& b) { return a.weight < b.weight; });
  for (const Link& link : links) {
    const double opacity = std::min(1.0, 0.15 + 0.85 * link.weight);
    svg.line(target_x[link.target], target_anchor, source_x[link.source], source_anchor,
             "class=\"link\" stroke=\"#31688e\" stroke-linecap=\"round\" stroke-width=\"" +
                 num(kWidestLine * link.weight, 3) + "\" stroke-opacity=\"" + num(opacity, 3) + "\"",
             labels.full_queries[link.target] + " → " + labels.full_keys[link.source] + ": " +
                 fixed(link.weight, 4));
  }
  for (std::size_t j = 0; j < sources.size(); ++j) {
    svg.circle(source_x[j], source_anchor, 2.5, "fill=\"#555\"");
    svg.text(source_x[j], source_baseline, sources[j], kFont, "class=\"source\" text-anchor=\"middle\"");
  }
  for (std::size_t i = 0; i < targets.size(); ++i) {
    svg.circle(target_x[i], target_anchor, 2.5, "fill=\"#555\"");
    svg.text(target_x[i], target_baseline, targets[i], kFont, "class=\"target\" text-anchor=\"middle\"");
  }
  const std::string caption_style = std::string("font-style=\"italic\" fill=\"") + kGreyText + "\"";
  svg.text(kMargin, source_baseline, "keys", kSmallFont, caption_style);
  svg.text(kMargin, target_baseline, "queries", kSmallFont, caption_style);
  const std::string legend =
      "line width ∝ attention weight (" + num(kWidestLine, 0) + " px = 1); weights below " + num(kSmallestDrawn) + " not drawn";
  const double legend_y = target_baseline + kSmallFont + 14;
  svg.text(kMargin, legend_y, legend, kSmallFont, std::string("class=\"legend\" fill=\"") + kGreyText + "\"");
  const double width = std::max({row_left + row_width, kMargin + text_width(legend, kSmallFont), kMargin + title_width(map.title)});
  return svg.document(width + kMargin, legend_y + kMargin);
}

std::string line_chart_svg(const LineChart& chart) {
  constexpr const char* op = "line_chart_svg";
  constexpr double kPlotWidth = 560, kPlotHeight = 320, kLabelFont = 12, kTickFont = 11;
  // The x axis is wider than it is tall, so it has room for more labels.
  constexpr std::size_t kMaxXTicks = 10, kMaxYTicks = 8, kMostPointsWithMarkers = 40;
  check_arg(!chart.series.empty(), op, "no series to draw");

  double x_low = std::numeric_limits<double>::infinity(), x_high = -x_low, y_low = x_low, y_high = -x_low;
  bool integer_x = true;
  for (const Series& series : chart.series) {
    check_shape(series.x.size() == series.y.size(), op, [&] {
      return "series '" + series.name + "' has " + std::to_string(series.x.size()) + " x values but " +
             std::to_string(series.y.size()) + " y values";
    });
    for (std::size_t k = 0; k < series.x.size(); ++k) {
      const double x = series.x[k], y = series.y[k];
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      const std::string point = "series '" + series.name + "' has the point (" + num(x, 6) + ", " + num(y, 6) + ")";
      check_arg(!chart.log_x || x > 0, op, [&] { return point + ", which a log x axis cannot show"; });
      check_arg(!chart.log_y || y > 0, op, [&] { return point + ", which a log y axis cannot show"; });
      x_low = std::min(x_low, x), x_high = std::max(x_high, x);
      integer_x = integer_x && x == std::round(x);
      y_low = std::min(y_low, y), y_high = std::max(y_high, y);
    }
  }
  check_arg(x_low <= x_high, op, "no finite (x, y) point in any series: nothing to draw");
  for (const double tick : chart.x_ticks)
    check_arg(std::isfinite(tick) && (!chart.log_x || tick > 0), op, [&] {
      return "x tick " + num(tick, 6) + " cannot be shown on " + (chart.log_x ? "a log" : "an") + " x axis";
    });

  Axis x_axis = make_axis(x_low, x_high, chart.log_x, kMaxXTicks, chart.x_ticks, integer_x);
  Axis y_axis = make_axis(y_low, y_high, chart.log_y, kMaxYTicks, {}, false);
  const std::vector<std::string> x_ticks = tick_labels(x_axis, !chart.x_ticks.empty()), y_ticks = tick_labels(y_axis, false);

  const double y_label_band = chart.y_label.empty() ? 0 : kLabelFont + 12;
  const double plot_left = kMargin + y_label_band + widest(y_ticks, kTickFont) + 10;
  const double plot_top = kMargin + (chart.title.empty() ? 6 : title_band(chart.title) + 4);
  const double plot_bottom = plot_top + kPlotHeight, plot_right = plot_left + kPlotWidth;
  // The axes' domains stop a little inside the frame, so points at the ends are not drawn on it.
  constexpr double kInset = 8;
  x_axis.pixel_low = plot_left + kInset, x_axis.pixel_high = plot_right - kInset;
  y_axis.pixel_low = plot_bottom - kInset, y_axis.pixel_high = plot_top + kInset;

  SvgBuilder svg;
  draw_title(svg, chart.title);
  // Grid lines and tick labels first, so the data is drawn over them.
  for (const double tick : x_axis.minor_ticks) {
    const double x = x_axis.to_pixel(tick);
    svg.line(x, plot_top, x, plot_bottom + 2, "stroke=\"#f2f2f2\"");
  }
  for (const double tick : y_axis.minor_ticks) {
    const double y = y_axis.to_pixel(tick);
    svg.line(plot_left - 2, y, plot_right, y, "stroke=\"#f2f2f2\"");
  }
  for (std::size_t k = 0; k < x_axis.ticks.size(); ++k) {
    const double x = x_axis.to_pixel(x_axis.ticks[k]);
    svg.line(x, plot_top, x, plot_bottom + 4, "stroke=\"#e3e3e3\"");
    svg.text(x, plot_bottom + 6 + kTickFont, x_ticks[k], kTickFont, "class=\"xtick\" text-anchor=\"middle\"");
  }
  for (std::size_t k = 0; k < y_axis.ticks.size(); ++k) {
    const double y = y_axis.to_pixel(y_axis.ticks[k]);
    svg.line(plot_left - 4, y, plot_right, y, "stroke=\"#e3e3e3\"");
    svg.text(plot_left - 7, y + kTickFont * 0.35, y_ticks[k], kTickFont, "class=\"ytick\" text-anchor=\"end\"");
  }
  svg.rect(plot_left, plot_top, kPlotWidth, kPlotHeight, "fill=\"none\" stroke=\"#888\"");
  const double x_label_y = plot_bottom + 6 + kTickFont + 8 + kLabelFont;
  if (!chart.x_label.empty())
    svg.text((plot_left + plot_right) / 2, x_label_y, chart.x_label, kLabelFont, "text-anchor=\"middle\"");
  if (!chart.y_label.empty()) {
    const double x = kMargin + kLabelFont, y = (plot_top + plot_bottom) / 2;
    svg.text(x, y, chart.y_label, kLabelFont,
             "text-anchor=\"middle\" transform=\"rotate(-90 " + num(x) + " " + num(y) + ")\"");
  }

  const double legend_x = plot_right + 18;
  double legend_width = 0;
  for (std::size_t s = 0; s < chart.series.size(); ++s) {
    const Series& series = chart.series[s];
    const std::string colour = kSeriesColours[s % kSeriesColours.size()];
    const std::string stroke = "fill=\"none\" stroke=\"" + colour + "\" stroke-width=\"2\" stroke-linejoin=\"round\"" +
                               (series.dashed ? " stroke-dasharray=\"7 4\"" : "");
    // NaN and infinite values break the line into separate pieces rather than ending it.
    std::string path;
    bool pen_down = false;
    std::size_t finite_points = 0;
    for (std::size_t k = 0; k < series.x.size(); ++k) {
      if (!std::isfinite(series.x[k]) || !std::isfinite(series.y[k])) {
        pen_down = false;
        continue;
      }
      path += (pen_down ? " L" : " M") + num(x_axis.to_pixel(series.x[k])) + " " + num(y_axis.to_pixel(series.y[k]));
      pen_down = true;
      ++finite_points;
    }
    const bool markers = !series.dashed && finite_points <= kMostPointsWithMarkers;
    svg.raw("<g class=\"series\"><title>" + xml_escape(series.name) + "</title>\n");
    if (!path.empty()) svg.raw("<path d=\"" + path.substr(1) + "\" " + stroke + "/>\n");
    if (markers)
      for (std::size_t k = 0; k < series.x.size(); ++k)
        if (std::isfinite(series.x[k]) && std::isfinite(series.y[k]))
          svg.circle(x_axis.to_pixel(series.x[k]), y_axis.to_pixel(series.y[k]), 3, "fill=\"" + colour + "\"");
    svg.raw("</g>\n");

    const double entry_y = plot_top + 10 + double(s) * 20;
    svg.line(legend_x, entry_y, legend_x + 26, entry_y, stroke);
    if (markers) svg.circle(legend_x + 13, entry_y, 3, "fill=\"" + colour + "\"");
    const std::string name = clean_utf8(series.name);
    svg.text(legend_x + 32, entry_y + kTickFont * 0.35, name, kTickFont, "class=\"legend\"");
    legend_width = std::max(legend_width, 32 + text_width(name, kTickFont));
  }
  const double width = std::max(legend_x + legend_width, kMargin + title_width(chart.title)) + kMargin;
  const double legend_bottom = plot_top + 10 + double(chart.series.size()) * 20;
  return svg.document(width, std::max(x_label_y, legend_bottom) + kMargin);
}

}  // namespace qkv
