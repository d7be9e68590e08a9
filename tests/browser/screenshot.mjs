// A screenshot of an explorer page as a person would set it up, for docs/attention_explorer.md:
//   node tests/browser/screenshot.mjs PAGE.html OUT.png [--group N] [--layer N] [--head N|all]
//                                      [--view heatmap|connections|highlight] [--hover QUERY_INDEX]
// (N counted from 0, as the pickers' values are).
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    group: { type: "string" }, layer: { type: "string" }, head: { type: "string" },
    view: { type: "string" }, hover: { type: "string" },
    width: { type: "string", default: "1100" }, height: { type: "string", default: "640" },
  },
});
const [page_file, out] = positionals;
if (!page_file || !out) throw new Error("usage: screenshot.mjs PAGE.html OUT.png [options]");
const args = ["--headless=new", "--disable-gpu", "--no-first-run"];
if (process.getuid && process.getuid() === 0) args.push("--no-sandbox");
const browser = await puppeteer.launch({ executablePath: "/usr/bin/chromium", headless: true, args });
try {
  const page = await browser.newPage();
  await page.setViewport({ width: Number(values.width), height: Number(values.height) });
  await page.goto(pathToFileURL(page_file).href, { waitUntil: "load" });
  for (const id of ["group", "layer", "head"]) if (values[id] !== undefined) await page.select(`#${id}`, values[id]);
  if (values.view) await page.click(`#views button[data-view="${values.view}"]`);
  if (values.hover !== undefined) await page.hover(`#view .token.query[data-index="${values.hover}"]`);
  await page.screenshot({ path: out });
} finally {
  await browser.close();
}
