// The attention explorer in headless Chromium: loads each page run.sh wrote, hovers, clicks
// and picks as a person would, and reads the result back from the DOM (data attributes and
// computed opacities), checking it against the page's own JSON.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

const env = name => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set (tests/browser/run.sh sets it)`);
  return value;
};
const PAGE = env("EXPLORER_PAGE");  // qkv-translate --explore: a <script> token, head importances
const TRAIN_PAGE = env("EXPLORER_TRAIN_PAGE");  // qkv-train's attention.html
const BAHDANAU_PAGE = env("EXPLORER_BAHDANAU_PAGE");
const SCREENSHOTS = env("EXPLORER_SCREENSHOTS");
const SCRIPT_TOKEN = "<script>window.pwned=1</script>";
const DIM = 0.15;  // the page's opacity for heatmap cells away from the focus
const close = (a, b) => Math.abs(a - b) < 1e-6;

let browser;
before(async () => {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const args = ["--headless=new", "--disable-gpu", "--no-first-run"];
  if (process.getuid && process.getuid() === 0) args.push("--no-sandbox");  // Chromium refuses root otherwise
  browser = await puppeteer.launch({ executablePath: "/usr/bin/chromium", headless: true, args });
});
after(async () => browser && (await browser.close()));

/// Opens `file` and collects every console error or warning, page error and network request.
async function open(file) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 820 });
  const problems = [];
  page.on("console", message => {
    if (message.type() === "error" || message.type() === "warn") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", error => problems.push(`page error: ${error.message}`));
  page.on("request", request => {
    if (!request.url().startsWith("file:")) problems.push(`network request: ${request.url()}`);
  });
  await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
  const data = JSON.parse(await page.$eval("#attention-data", script => script.textContent));
  return { page, problems, data };
}

/// Runs `body` on a freshly opened page, then checks that the page logged no error and asked
/// for nothing over the network.
async function onPage(file, body) {
  const opened = await open(file);
  try {
    await body(opened);
  } finally {
    await opened.page.close();
  }
  assert.deepEqual(opened.problems, [], file);
}

/// Every element matching `selector` in the view: its data attributes as numbers (side, which
/// is text, becomes NaN) and its computed opacity, stroke opacity and stroke colour.
const drawn = (page, selector) =>
  page.$$eval(selector, nodes => nodes.map(node => {
    const style = getComputedStyle(node);
    const data = Object.entries(node.dataset).map(([name, value]) => [name, Number(value)]);
    return { ...Object.fromEntries(data), opacity: Number(style.opacity), stroke: Number(style.strokeOpacity),
             colour: style.stroke };
  }));
// Heatmap cells carry their query row as data-index (what hovering one focuses).
const cells = async page => (await drawn(page, "rect.cell")).map(c => ({ ...c, query: c.index }));
const links = async page => (await drawn(page, "line.link")).map(l => ({ ...l, opacity: l.stroke }));
const highlights = (page, side) =>
  page.$$eval(`span.token.${side}`, spans => spans.map(s => ({
    highlight: Number(s.dataset.highlight), background: getComputedStyle(s).backgroundColor,
  })));
const pick = (page, id, value) => page.select(`#${id}`, String(value));
const view = (page, name) => page.click(`#views button[data-view="${name}"]`);
const hover = (page, side, index) => page.hover(`#view .token.${side}[data-index="${index}"]`);
const unhover = page => page.mouse.move(1270, 810);  // the page's empty corner

test("the transformer's page loads every attention with no console error and no request", () =>
  onPage(PAGE, async ({ page, data }) => {
    const titles = await page.$$eval("#group option", options => options.map(o => o.textContent));
    assert.deepEqual(titles, ["cross-attention", "encoder self-attention", "decoder self-attention"]);
    assert.deepEqual(titles, data.groups.map(g => g.title));
    for (const g of data.groups) {
      assert.equal(g.layers, 2);
      assert.equal(g.heads, 2);
      assert.equal(g.maps.length, 4);
    }
    // The default view: cross-attention, layer 1, head 1, as a heatmap of exactly that map.
    const shown = await cells(page);
    const map = data.groups[0].maps[0];
    assert.equal(shown.length, map.weights.length * map.weights[0].length);
    for (const c of shown) assert.ok(close(c.weight, map.weights[c.query][c.key]) && c.head === 0 && c.opacity === 1);
    // Each row's entropy beside it.
    const entropies = await page.$$eval("#view text.entropy", texts => texts.map(t => Number(t.textContent)));
    assert.deepEqual(entropies, map.row_entropy.map(h => Number(h.toFixed(2))));
  }));

test("a <script> token shows as text and never runs", async () => {
  const raw = fs.readFileSync(PAGE, "utf8");
  assert.ok(!raw.includes(SCRIPT_TOKEN), "the token is in the page's source unescaped");
  assert.ok(raw.includes("\\u003cscript>window.pwned=1\\u003c/script>"));
  await onPage(PAGE, async ({ page, data }) => {
    assert.equal(await page.evaluate(() => window.pwned), undefined);
    assert.equal(await page.$$eval("script", scripts => scripts.length), 2);  // the data and the page's own
    assert.ok(data.groups[0].key_tokens.includes(SCRIPT_TOKEN));
    assert.ok((await page.$eval("#title", t => t.textContent)).includes(SCRIPT_TOKEN));
    const keyLabels = await page.$$eval("#view .token.key", texts => texts.map(t => t.textContent));
    assert.ok(keyLabels.includes(SCRIPT_TOKEN));
    assert.ok(keyLabels.includes('"q&amp;"'));  // entities stay as typed
    await view(page, "highlight");
    const spans = await page.$$eval("span.token.key .text", spans => spans.map(s => s.textContent));
    assert.ok(spans.includes(SCRIPT_TOKEN));
    assert.equal(await page.evaluate(() => window.pwned), undefined);
  });
});

test("hovering a token highlights what it attends to, by weight, in each view", () =>
  onPage(PAGE, async ({ page, data }) => {
    const map = data.groups[0].maps[0];  // cross-attention layer 1 head 1
    assert.ok(map.weights.length >= 2, "the translation needs two rows");

    // Heatmap: the hovered query's row stays, the rest fades.
    for (const row of [0, 1]) {
      await hover(page, "query", row);
      const shown = await cells(page);
      for (const c of shown) assert.equal(c.opacity, c.query === row ? 1 : DIM, `row ${row}, cell ${c.query},${c.key}`);
      const status = await page.$eval("#status", s => s.textContent);
      assert.ok(status.startsWith(`“${data.groups[0].query_tokens[row]}” attends to`), status);
    }
    await hover(page, "key", 2);  // a key: its column
    for (const c of await cells(page)) assert.equal(c.opacity, c.key === 2 ? 1 : DIM);

    // Connections: every line at its weight, then only the hovered token's.
    await view(page, "connections");
    await unhover(page);
    const all = await links(page);
    assert.equal(all.length, map.weights.length * map.weights[0].length);
    for (const l of all) assert.ok(close(l.opacity, map.weights[l.query][l.key]));
    await hover(page, "query", 1);
    for (const l of await links(page)) assert.ok(close(l.opacity, l.query === 1 ? l.weight : 0));
    await hover(page, "key", 0);
    for (const l of await links(page)) assert.ok(close(l.opacity, l.key === 0 ? l.weight : 0));

    // Highlight: the keys light up by the hovered query's weights, then by another's.
    await view(page, "highlight");
    for (const row of [0, 1]) {
      await hover(page, "query", row);
      const keys = await highlights(page, "key");
      keys.forEach((k, j) => {
        assert.ok(close(k.highlight, map.weights[row][j]), `key ${j}: ${k.highlight} != ${map.weights[row][j]}`);
        const alpha = Number((k.background.match(/rgba?\(([^)]*)\)/)[1].split(",")[3] ?? "1"));
        assert.ok(Math.abs(alpha - map.weights[row][j]) < 0.01, `key ${j} background ${k.background}`);
      });
    }
    // A click pins the focus: moving on leaves query 0 lit until the next click on it.
    await page.click('#view .token.query[data-index="0"]');
    await hover(page, "query", 1);
    let keys = await highlights(page, "key");
    keys.forEach((k, j) => assert.ok(close(k.highlight, map.weights[0][j])));
    await page.click('#view .token.query[data-index="0"]');
    await hover(page, "query", 1);
    keys = await highlights(page, "key");
    keys.forEach((k, j) => assert.ok(close(k.highlight, map.weights[1][j])));
  }));

test("picking a layer, a head, all heads or another attention changes the view", () =>
  onPage(PAGE, async ({ page, data }) => {
    const cross = data.groups[0];
    const shownWeights = async () => (await cells(page)).map(c => c.weight);
    const mapWeights = m => m.weights.flat();
    const before = await shownWeights();
    await pick(page, "layer", 1);
    assert.deepEqual(await shownWeights(), mapWeights(cross.maps[2]));  // layer 2 head 1
    assert.notDeepEqual(await shownWeights(), before);
    assert.match(await page.$eval("#caption", c => c.textContent), /layer 2 of 2, head 1 of 2/);
    await pick(page, "head", 1);
    assert.deepEqual(await shownWeights(), mapWeights(cross.maps[3]));
    // All heads: each cell split into one stripe per head, lines in one colour per head.
    await pick(page, "head", "all");
    const stripes = await cells(page);
    assert.equal(stripes.length, 2 * cross.maps[2].weights.flat().length);
    assert.deepEqual([...new Set(stripes.map(c => c.head))], [0, 1]);
    await view(page, "connections");
    const lines = await links(page);
    assert.equal(new Set(lines.map(l => l.colour)).size, 2);
    for (const l of lines) assert.ok(close(l.weight, cross.maps[2 + l.head].weights[l.query][l.key]));
    await page.screenshot({ path: path.join(SCREENSHOTS, "connections-all-heads.png") });
    // Encoder self-attention: source tokens on both axes.
    await pick(page, "group", 1);
    await view(page, "heatmap");
    const keyLabels = await page.$$eval("#view .token.key", texts => texts.map(t => t.textContent));
    assert.deepEqual(keyLabels, data.groups[1].key_tokens);
    assert.deepEqual(data.groups[1].query_tokens, data.groups[1].key_tokens);
    assert.deepEqual(await shownWeights(), mapWeights(data.groups[1].maps[0]));
  }));

test("head importances are shown when the data has them, and a head is picked by clicking it", () =>
  onPage(PAGE, async ({ page, data }) => {
    const expected = JSON.parse(fs.readFileSync(path.join(path.dirname(PAGE), "head_importance.json"), "utf8"));
    assert.deepEqual(data.head_importance, expected);
    const numbers = () => page.$$eval("#overview .importance", divs => divs.map(d => Number(d.textContent)));
    assert.deepEqual(await numbers(), expected["cross-attention"].flat());
    await pick(page, "group", 2);  // decoder self-attention: none given
    assert.deepEqual(await numbers(), []);
    await pick(page, "group", 1);
    assert.deepEqual(await numbers(), expected["encoder self-attention"].flat());
    await page.click('#overview td[data-layer="1"][data-head="1"]');
    assert.equal(await page.$eval("#layer", s => s.value), "1");
    assert.equal(await page.$eval("#head", s => s.value), "1");
    assert.deepEqual((await cells(page)).map(c => c.weight), data.groups[1].maps[3].weights.flat());
    // The screenshot for a person to look at: a hovered source token in the heatmap.
    await pick(page, "group", 0);
    await hover(page, "query", 1);
    await page.screenshot({ path: path.join(SCREENSHOTS, "heatmap.png") });
    await view(page, "highlight");
    await hover(page, "query", 1);
    await page.screenshot({ path: path.join(SCREENSHOTS, "highlight.png") });
  }));

test("qkv-train's page and the Bahdanau model's one map load and respond", async () => {
  for (const file of [TRAIN_PAGE, BAHDANAU_PAGE])
    await onPage(file, async ({ page, data }) => {
      assert.equal(data.head_importance, undefined);
      assert.equal(await page.$$eval("#overview .importance", divs => divs.length), 0);
      const map = data.groups[0].maps[0];
      await hover(page, "query", 0);
      for (const c of await cells(page)) assert.equal(c.opacity, c.query === 0 ? 1 : DIM);
      if (file === BAHDANAU_PAGE) {
        assert.deepEqual(data.groups.map(g => [g.title, g.layers, g.heads]), [["cross-attention", 1, 1]]);
        assert.equal(await page.$$eval("#head option", o => o.length), 1);  // no "all heads" for one head
        assert.equal(map.name, "attention");
        await page.screenshot({ path: path.join(SCREENSHOTS, "bahdanau.png") });
      }
    });
});
