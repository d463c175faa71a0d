import { readFileSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { BEGIN, END, coverageTable } from "../src/api/coverage.js";
import { API, HANDWRITTEN } from "../src/api/table.js";
import { cName } from "../src/api/types.js";
import * as nbd from "nbd-ts";

const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");

test("README's coverage table is the one the API table renders", () => {
  const block = readme.slice(readme.indexOf(BEGIN) + BEGIN.length, readme.indexOf(END)).trim();
  assert.is(block, coverageTable());
});

test("every table entry is a Handle method and a row of the README", () => {
  const h = nbd.create()!;
  for (const [key, call] of Object.entries(API)) {
    assert.type((h as unknown as Record<string, unknown>)[key], "function", key);
    assert.ok(readme.includes(`| \`${cName(key, call)}\` |`), `${cName(key, call)} in README`);
  }
  for (const c of Object.keys(HANDWRITTEN)) assert.ok(readme.includes(`| \`${c}\` |`), c);
  h.close();
});

test("the README's two quick-start commands are the package's scripts", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
  assert.ok(readme.includes("npm ci && npm run demo"));
  assert.ok(readme.includes("npm ci && npm test"));
  assert.type(pkg.scripts.demo, "string");
  assert.type(pkg.scripts.test, "string");
  const ci = readFileSync(new URL("../../.ci/run", import.meta.url), "utf8");
  assert.ok(ci.includes("npm ci && npm test"), ".ci/run runs the README's test command");
});

test.run();
