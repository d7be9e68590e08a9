#include "train/attention_explorer.hpp"

#include <algorithm>
#include <cmath>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "train/data_spec.hpp"

namespace qkv::train {
using nlohmann::json;

namespace {

// The page around the data. Its script (readable on purpose: no framework, no build step)
// draws everything from the JSON in #attention-data; tokens only ever go through textContent.
constexpr std::string_view page_head = R"page(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qkv attention explorer</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
  header { padding: 12px 20px 4px; }
  h1 { font-size: 18px; margin: 0 0 4px; }
  h1 .arrow { color: #888; padding: 0 6px; }
  nav { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; padding: 8px 20px;
        border-bottom: 1px solid #ddd; background: #fff; }
  nav label { display: flex; gap: 6px; align-items: center; }
  nav button { font: inherit; padding: 3px 10px; border: 1px solid #bbb; background: #f4f4f4; cursor: pointer; }
  nav button[aria-pressed="true"] { background: #1f77b4; border-color: #1f77b4; color: #fff; }
  #views { display: flex; gap: 0; }
  main { display: flex; flex-wrap: wrap; gap: 20px; padding: 12px 20px; align-items: flex-start; }
  #view-panel { background: #fff; border: 1px solid #ddd; padding: 10px; overflow: auto; max-width: 100%; }
  #caption { margin: 0 0 6px; color: #444; }
  #caption .swatch { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; }
  #status { min-height: 1.4em; margin: 6px 0 0; color: #333; font-variant-numeric: tabular-nums; }
  aside { background: #fff; border: 1px solid #ddd; padding: 10px; }
  aside h2 { font-size: 15px; margin: 0 0 4px; }
  .note { color: #666; font-size: 12px; margin: 0 0 6px; max-width: 320px; }
  table.heads { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
  table.heads th { font-weight: normal; color: #555; padding: 2px 6px; }
  table.heads td { border: 1px solid #ddd; padding: 3px 6px; text-align: center; cursor: pointer; }
  table.heads td.selected { outline: 2px solid #d62728; outline-offset: -2px; }
  table.heads .importance { font-weight: bold; }
  svg text { font: 13px system-ui, sans-serif; fill: #222; }
  svg .token { cursor: pointer; pointer-events: bounding-box; }
  svg .token.focused { font-weight: bold; fill: #d62728; }
  svg .entropy, svg .axis-note { font-size: 11px; fill: #666; }
  .token-row { max-width: 760px; display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; margin: 4px 0 16px; }
  .row-label { width: 100%; color: #666; font-size: 12px; }
  span.token { display: inline-flex; flex-direction: column; align-items: stretch; cursor: pointer;
               border: 1px solid #ccc; border-radius: 3px; padding: 2px 6px 0; background: #fff; white-space: pre; }
  span.token.focused { outline: 2px solid #d62728; }
  span.token .bars { display: flex; height: 6px; margin: 2px -6px 0; }
  span.token .bar { flex: 1; }
  .message { color: #666; }
</style>
</head>
<body>
<header><h1 id="title"></h1></header>
<nav>
  <label>attention <select id="group"></select></label>
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <span id="views" role="group" aria-label="view">
    <button type="button" data-view="heatmap">heatmap</button>
    <button type="button" data-view="connections">connections</button>
    <button type="button" data-view="highlight">highlight</button>
  </span>
</nav>
<main>
  <section id="view-panel">
    <p id="caption"></p>
    <div id="view"></div>
    <p id="status"></p>
  </section>
  <aside id="overview"></aside>
</main>
<script type="application/json" id="attention-data">)page";

constexpr std::string_view page_tail = R"page(</script>
<script>
"use strict";
// Draws the JSON above (train/attention_explorer.hpp describes it). Every token is set with
// textContent, never parsed as HTML, whatever characters it holds.
const data = JSON.parse(document.getElementById("attention-data").textContent);
const SVG_NS = "http://www.w3.org/2000/svg";
// One colour per head (Tableau 10), so that overlaid heads stay apart.
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const DIM = 0.15;  // heatmap cells outside the focused token's row or column fade to this

const state = {
  group: 0,         // index into data.groups
  layer: 0,         // 0-based
  head: 0,          // 0-based, or "all": every head of the layer overlaid
  view: "heatmap",  // "heatmap" | "connections" | "highlight"
  focus: null,      // {side: "query" | "key", index}: the hovered or clicked token
  pinned: false,    // a click keeps the focus until the next click
};

function element(namespace, tag, attributes = {}, text = null) {
  const e = namespace ? document.createElementNS(namespace, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) e.setAttribute(name, value);
  if (text !== null) e.textContent = text;
  return e;
}
const html = (tag, attributes, text) => element(null, tag, attributes, text);
const svg = (tag, attributes, text) => element(SVG_NS, tag, attributes, text);

const colour = head => COLOURS[head % COLOURS.length];
const group = () => data.groups[state.group];
const shownHeads = () => (state.head === "all" ? [...Array(group().heads).keys()] : [state.head]);
const mapOf = head => group().maps[state.layer * group().heads + head];
const measure = document.createElement("canvas").getContext("2d");
measure.font = "13px system-ui, sans-serif";
const textWidth = tokens => Math.max(0, ...tokens.map(t => measure.measureText(t).width));

/// The weight between a query and a key in `head`.
const weight = (head, query, key) => mapOf(head).weights[query][key];
/// Whether a query-key pair involves the focused token (everything does when nothing is focused).
function touches(query, key) {
  const f = state.focus;
  return !f || (f.side === "query" ? f.index === query : f.index === key);
}
/// The weights that light up a token when another is focused: one per shown head, or null.
function litWeights(side, index) {
  const f = state.focus;
  if (!f || f.side === side) return null;
  return shownHeads().map(head => (side === "key" ? weight(head, f.index, index) : weight(head, index, f.index)));
}

/// A token label in an SVG view; hovering or clicking it focuses it.
function tokenText(token, side, index, attributes) {
  return svg("text", {...attributes, class: `token ${side}`, "data-side": side, "data-index": index}, token);
}

/// Each shown head's entropy of query row i, in that head's colour.
function entropyText(i, attributes) {
  const text = svg("text", {...attributes, class: "entropy", "dominant-baseline": "middle"});
  for (const head of shownHeads())
    text.append(svg("tspan", {fill: colour(head), dx: 4}, mapOf(head).row_entropy[i].toFixed(2)));
  return text;
}

function drawHeatmap(view) {
  const g = group(), heads = shownHeads();
  const rows = g.query_tokens.length, columns = g.key_tokens.length;
  const cell = Math.max(14, Math.min(34, Math.floor(560 / Math.max(rows, columns))));
  const fits = token => textWidth([token]) <= cell - 4;  // a key label that does not fit its column slants
  const slanted = g.key_tokens.filter(token => !fits(token));
  const left = textWidth(g.query_tokens) + 14, top = 0.85 * textWidth(slanted) + 26;
  const width = left + columns * cell + 24 + Math.max(50, 38 * heads.length), height = top + rows * cell + 24;
  const root = svg("svg", {width, height, class: "heatmap"});
  g.key_tokens.forEach((token, j) => {
    const x = left + (j + 0.5) * cell, y = top - 6;
    root.append(tokenText(token, "key", j, fits(token) ? {x, y, "text-anchor": "middle"}
                                                       : {x, y, transform: `rotate(-55 ${x} ${y})`}));
  });
  root.append(svg("text", {x: left + columns * cell + 12, y: top - 6, class: "axis-note"}, "H (nats)"));
  root.append(svg("rect", {x: left, y: top, width: columns * cell, height: rows * cell, fill: "#fff", stroke: "#ccc"}));
  const stripe = cell / heads.length;  // all heads: each cell split into one stripe per head
  g.query_tokens.forEach((token, i) => {
    const y = top + i * cell;
    root.append(tokenText(token, "query", i, {x: left - 6, y: y + cell / 2, "text-anchor": "end",
                                              "dominant-baseline": "middle"}));
    for (let j = 0; j < columns; ++j)
      heads.forEach((head, k) => {
        const w = weight(head, i, j);
        const rect = svg("rect", {class: "cell", x: left + j * cell + k * stripe, y, width: stripe, height: cell,
                                  fill: colour(head), "fill-opacity": w, "data-side": "query", "data-index": i,
                                  "data-key": j, "data-head": head, "data-weight": w});
        rect.append(svg("title", {}, `head ${head + 1}: ${token} → ${g.key_tokens[j]}: ${w}`));
        root.append(rect);
      });
    root.append(entropyText(i, {x: left + columns * cell + 8, y: y + cell / 2}));
  });
  view.append(root);
}

function drawConnections(view) {
  const g = group(), heads = shownHeads();
  const row = 24, top = 28, gap = 240;
  const entropyWidth = 38 * heads.length;
  const xQuery = entropyWidth + textWidth(g.query_tokens) + 12, xKey = xQuery + gap;
  const width = xKey + Math.max(textWidth(g.key_tokens), textWidth([`keys (${g.keys})`])) + 16;
  const height = top + row * Math.max(g.query_tokens.length, g.key_tokens.length) + 8;
  const root = svg("svg", {width, height, class: "connections"});
  root.append(svg("text", {x: xQuery, y: 14, "text-anchor": "end", class: "axis-note"}, `queries (${g.queries})`));
  root.append(svg("text", {x: xKey, y: 14, class: "axis-note"}, `keys (${g.keys})`));
  const y = index => top + (index + 0.5) * row;
  heads.forEach((head, k) => {
    const shift = 3 * (k - (heads.length - 1) / 2);  // overlaid heads side by side, not on top of each other
    g.query_tokens.forEach((_, i) =>
      g.key_tokens.forEach((_, j) => {
        const w = weight(head, i, j);
        root.append(svg("line", {class: "link", x1: xQuery + 6, y1: y(i) + shift, x2: xKey - 6, y2: y(j) + shift,
                                 stroke: colour(head), "stroke-width": 2.5, "stroke-opacity": w, "data-query": i,
                                 "data-key": j, "data-head": head, "data-weight": w}));
      }));
  });
  g.query_tokens.forEach((token, i) => {
    root.append(entropyText(i, {x: 0, y: y(i)}));
    root.append(tokenText(token, "query", i, {x: xQuery, y: y(i), "text-anchor": "end",
                                              "dominant-baseline": "middle"}));
  });
  g.key_tokens.forEach((token, j) =>
    root.append(tokenText(token, "key", j, {x: xKey, y: y(j), "dominant-baseline": "middle"})));
  view.append(root);
}

function drawHighlight(view) {
  const g = group();
  const tokenRow = (label, tokens, side) => {
    const row = html("div", {class: "token-row"});
    row.append(html("div", {class: "row-label"}, label));
    tokens.forEach((token, index) => {
      const span = html("span", {class: `token ${side}`, "data-side": side, "data-index": index, "data-highlight": 0});
      span.append(html("span", {class: "text"}, token));
      const bars = html("span", {class: "bars"});
      for (const head of shownHeads())
        bars.append(html("span", {class: "bar", "data-head": head, style: `background: ${colour(head)}; opacity: 0`}));
      span.append(bars);
      row.append(span);
    });
    return row;
  };
  view.append(tokenRow(`queries (${g.queries}): hover or click one to light up the keys it attends to`,
                       g.query_tokens, "query"),
              tokenRow(`keys (${g.keys}): hover or click one to light up the queries that attend to it`,
                       g.key_tokens, "key"));
}

const hexToRgb = hex => [1, 3, 5].map(k => parseInt(hex.slice(k, k + 2), 16)).join(", ");

/// Shows the focus in the drawn view: no redraw, only opacities and classes change.
function applyFocus() {
  const view = document.getElementById("view");
  for (const token of view.querySelectorAll(".token")) {
    const side = token.dataset.side, index = Number(token.dataset.index);
    token.classList.toggle("focused", !!state.focus && state.focus.side === side && state.focus.index === index);
    if (token.tagName !== "SPAN") continue;  // highlight view: light up by weight
    const lit = litWeights(side, index);
    token.dataset.highlight = lit ? Math.max(...lit) : 0;
    token.querySelectorAll(".bar").forEach((bar, k) => (bar.style.opacity = lit ? lit[k] : 0));
    token.style.backgroundColor = lit && lit.length === 1 ? `rgba(${hexToRgb(colour(state.head))}, ${lit[0]})` : "";
  }
  for (const rect of view.querySelectorAll("rect.cell"))
    rect.setAttribute("opacity", touches(Number(rect.dataset.index), Number(rect.dataset.key)) ? 1 : DIM);
  for (const line of view.querySelectorAll("line.link"))
    line.setAttribute("stroke-opacity",
                      touches(Number(line.dataset.query), Number(line.dataset.key)) ? line.dataset.weight : 0);
  document.getElementById("status").textContent = describeFocus();
}

/// "“c” attends to: “a” 0.61 · “b” 0.22 · “<eos>” 0.10" (the shown heads' mean, the top 3).
function describeFocus() {
  const f = state.focus, g = group();
  if (!f) return "Hover or click a token.";
  const heads = shownHeads();
  const others = f.side === "query" ? g.key_tokens : g.query_tokens;
  const mean = others.map((_, k) => {
    const [q, key] = f.side === "query" ? [f.index, k] : [k, f.index];
    return heads.reduce((sum, head) => sum + weight(head, q, key), 0) / heads.length;
  });
  const top = mean.map((w, k) => [w, k]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  const token = (f.side === "query" ? g.query_tokens : g.key_tokens)[f.index];
  const verb = f.side === "query" ? "attends to" : "is attended to by";
  const which = heads.length > 1 ? " (mean of the heads)" : "";
  return `“${token}” ${verb}${which}: ` + top.map(([w, k]) => `“${others[k]}” ${w.toFixed(2)}`).join(" · ");
}

function drawOverview() {
  const aside = document.getElementById("overview");
  aside.replaceChildren();
  const g = group();
  const importance = data.head_importance ? data.head_importance[g.title] : undefined;
  aside.append(html("h2", {}, "heads"));
  aside.append(html("p", {class: "note"}, importance
    ? "Mean row entropy (nats) and, in bold, the head's importance; shaded by importance. Click a head to show it."
    : "Mean row entropy (nats); darker is sharper attention. Click a head to show it."));
  const table = html("table", {class: "heads"});
  const header = html("tr");
  header.append(html("th"));
  for (let h = 0; h < g.heads; ++h) header.append(html("th", {}, `head ${h + 1}`));
  table.append(header);
  const largest = importance ? Math.max(1e-12, ...importance.flat().map(Math.abs)) : 1;
  for (let layer = 0; layer < g.layers; ++layer) {
    const tr = html("tr");
    tr.append(html("th", {}, `layer ${layer + 1}`));
    for (let h = 0; h < g.heads; ++h) {
      const map = g.maps[layer * g.heads + h];
      const share = importance ? Math.abs(importance[layer][h]) / largest
                               : 1 - map.mean_entropy / Math.max(1e-12, g.max_entropy);
      const selected = layer === state.layer && (state.head === "all" || state.head === h);
      const td = html("td", {class: selected ? "head-cell selected" : "head-cell", "data-layer": layer, "data-head": h,
                             style: `background: rgba(31, 119, 180, ${(0.55 * share).toFixed(3)})`});
      td.append(html("div", {class: "entropy"}, map.mean_entropy.toFixed(2)));
      if (importance) td.append(html("div", {class: "importance"}, String(importance[layer][h])));
      td.addEventListener("click", () => {
        state.layer = layer;
        state.head = h;
        render();
      });
      tr.append(td);
    }
    table.append(tr);
  }
  aside.append(table);
  aside.append(html("p", {class: "note"}, `Uniform attention over the ${g.key_tokens.length} keys has entropy ` +
                                          `ln ${g.key_tokens.length} = ${g.max_entropy.toFixed(2)}.`));
}

function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, label]) => html("option", {value: v}, label)));
  select.value = String(value);
}

function render() {
  const g = group();
  fillSelect(document.getElementById("group"), data.groups.map((each, k) => [k, each.title]), state.group);
  fillSelect(document.getElementById("layer"), [...Array(g.layers).keys()].map(l => [l, `${l + 1}`]), state.layer);
  const heads = [...Array(g.heads).keys()].map(h => [h, `${h + 1}`]);
  fillSelect(document.getElementById("head"), g.heads > 1 ? [...heads, ["all", "all heads"]] : heads, state.head);
  for (const button of document.querySelectorAll("#views button"))
    button.setAttribute("aria-pressed", String(button.dataset.view === state.view));

  const caption = document.getElementById("caption");
  caption.replaceChildren(`${g.title}, layer ${state.layer + 1} of ${g.layers}, ` +
                          (state.head === "all" ? `all ${g.heads} heads:` : `head ${state.head + 1} of ${g.heads}:`));
  for (const head of shownHeads()) {
    caption.append(html("span", {class: "swatch", style: `background: ${colour(head)}`}));
    caption.append(`head ${head + 1}`);
  }
  const view = document.getElementById("view");
  view.replaceChildren();
  ({heatmap: drawHeatmap, connections: drawConnections, highlight: drawHighlight})[state.view](view);
  drawOverview();
  applyFocus();
}

function setFocus(focus, pinned) {
  state.focus = focus;
  state.pinned = pinned;
  applyFocus();
}

function start() {
  const title = document.getElementById("title");
  title.append(data.source, html("span", {class: "arrow"}, "→"), data.translation + (data.finished ? "" : " …"));
  document.title = `attention: ${data.source} → ${data.translation}`;
  if (data.groups.length === 0) {
    document.querySelector("main").replaceChildren(html("p", {class: "message"},
      "The model generated nothing for this sentence: there is no attention to show."));
    return;
  }
  const reset = () => { state.focus = null; state.pinned = false; };
  document.getElementById("group").addEventListener("change", event => {
    state.group = Number(event.target.value);
    state.layer = 0;
    state.head = 0;
    reset();
    render();
  });
  document.getElementById("layer").addEventListener("change", event => {
    state.layer = Number(event.target.value);
    render();
  });
  document.getElementById("head").addEventListener("change", event => {
    state.head = event.target.value === "all" ? "all" : Number(event.target.value);
    render();
  });
  for (const button of document.querySelectorAll("#views button"))
    button.addEventListener("click", () => {
      state.view = button.dataset.view;
      render();
    });
  // Hovering a token (or a heatmap cell: its query row) focuses it; a click pins the focus,
  // a second click on the same token or a click elsewhere releases it.
  const view = document.getElementById("view");
  const focusOf = event => {
    const target = event.target.closest("[data-side]");
    return target ? {side: target.dataset.side, index: Number(target.dataset.index)} : null;
  };
  view.addEventListener("mouseover", event => {
    const focus = focusOf(event);
    if (focus && !state.pinned) setFocus(focus, false);
  });
  view.addEventListener("mouseleave", () => { if (!state.pinned) setFocus(null, false); });
  view.addEventListener("click", event => {
    const focus = focusOf(event), f = state.focus;
    const same = focus && f && state.pinned && focus.side === f.side && focus.index === f.index;
    setFocus(focus, !!focus && !same);
  });
  render();
}

start();
</script>
</body>
</html>
)page";

std::string side_name(models::TokenSide side) { return side == models::TokenSide::source ? "source" : "target"; }

double rounded(double value, double unit) { return std::round(value / unit) * unit; }

/// Refuses head_importance that does not fit `groups` (the page's groups, already built).
void check_head_importance(const json& importance, const json& groups) {
  const char* owner = "attention explorer head_importance";
  check_arg(importance.is_object(), owner,
            [&] { return "must be an object keyed by group title, got " + importance.dump(); });
  for (auto item = importance.begin(); item != importance.end(); ++item) {
    const std::string& title = item.key();
    const json& layers = item.value();
    const auto group = std::find_if(groups.begin(), groups.end(), [&](const json& g) { return g["title"] == title; });
    check_arg(group != groups.end(), owner, [&] {
      std::string known;
      for (const json& g : groups) known += (known.empty() ? "" : ", ") + g["title"].get<std::string>();
      return "no attention group \"" + title + "\" in this sentence (it has: " + known + ")";
    });
    const std::size_t layer_count = (*group)["layers"], head_count = (*group)["heads"];
    const auto shape_ok = [&] {
      if (!layers.is_array() || layers.size() != layer_count) return false;
      for (const json& heads : layers)
        if (!heads.is_array() || heads.size() != head_count) return false;
      return true;
    };
    check_arg(shape_ok(), owner, [&] {
      return "\"" + title + "\" must be " + std::to_string(layer_count) + " layers of " + std::to_string(head_count) +
             " numbers, got " + layers.dump();
    });
    for (const json& heads : layers)
      for (const json& value : heads) json_value<double>(value, owner, title);
  }
}

}  // namespace

json attention_explorer_data(const SentenceAttention& sentence, const Vocabs& vocabs, const json& data_spec,
                             const json& head_importance) {
  json groups = json::array();
  for (const SentenceAttention::Group& group : sentence.groups) {
    check_arg(group.heads > 0 && group.maps.size() % group.heads == 0, "attention explorer",
              [&] { return group.title + ": " + std::to_string(group.maps.size()) + " maps are not whole layers of " +
                           std::to_string(group.heads) + " heads"; });
    json maps = json::array();
    for (std::size_t m = 0; m < group.maps.size(); ++m) {
      const Array& map = group.maps[m];  // [Tq, Tk]
      json weights = json::array();
      for (std::size_t i = 0; i < map.shape()[0]; ++i) {
        json row = json::array();
        for (std::size_t j = 0; j < map.shape()[1]; ++j) row.push_back(rounded(map(i, j), 1e-5));
        weights.push_back(std::move(row));
      }
      const std::vector<double> entropies = row_entropies(map);
      json row_entropy = json::array();
      for (const double h : entropies) row_entropy.push_back(rounded(h, 1e-4));
      maps.push_back({{"name", group.names[m]},
                      {"layer", m / group.heads + 1},
                      {"head", m % group.heads + 1},
                      {"weights", std::move(weights)},
                      {"row_entropy", std::move(row_entropy)},
                      {"mean_entropy", rounded(mean_entropy(entropies), 1e-4)}});
    }
    groups.push_back({{"title", group.title},
                      {"queries", side_name(group.query_side)},
                      {"keys", side_name(group.key_side)},
                      {"query_tokens", group.queries},
                      {"key_tokens", group.keys},
                      {"layers", group.maps.size() / group.heads},
                      {"heads", group.heads},
                      {"max_entropy", rounded(std::log(double(group.keys.size())), 1e-4)},
                      {"maps", std::move(maps)}});
  }
  json data = {{"format", "qkv-attention-explorer"},
               {"version", 1},
               {"source", detokenize(data_spec, sentence.source)},
               {"translation", detokenize(data_spec, vocabs.target.decode(sentence.hypothesis.tokens))},
               {"finished", sentence.hypothesis.finished},
               {"groups", std::move(groups)}};
  if (!head_importance.is_null()) {
    check_head_importance(head_importance, data["groups"]);
    data["head_importance"] = head_importance;
  }
  return data;
}

std::string attention_explorer_html(const json& data) {
  // Invalid UTF-8 in a token becomes U+FFFD instead of an exception; "<" occurs only inside
  // JSON strings, where \u003c means the same, so "</script>" and "<!--" cannot appear.
  const std::string text = data.dump(-1, ' ', false, json::error_handler_t::replace);
  std::string page(page_head);
  page.reserve(page.size() + text.size() + page_tail.size());
  for (const char c : text)
    if (c == '<')
      page += "\\u003c";
    else
      page += c;
  page += page_tail;
  return page;
}

void write_attention_explorer(const SentenceAttention& sentence, const Vocabs& vocabs, const json& data_spec,
                              const std::string& file, const json& head_importance) {
  const json data = attention_explorer_data(sentence, vocabs, data_spec, head_importance);
  write_file_atomically(file, attention_explorer_html(data));
}

}  // namespace qkv::train
