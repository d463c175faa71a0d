/**
 * The `nbd-ts` command itself: package.json's bin names an executable with
 * a node shebang; it dispatches to the tools, and says what it is.
 */
import { spawnSync } from "node:child_process";
import { accessSync, constants, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { tool } from "./cli.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8"));

test("package.json's bin: an executable file under dist/src (shipped by files), run directly", () => {
  const bin = pkg.bin["nbd-ts"];
  assert.is(bin, "dist/src/cli/main.js");
  assert.ok(pkg.files.some((f: string) => bin.startsWith(`${f}/`)));
  accessSync(`${root}${bin}`, constants.X_OK);
  assert.ok(readFileSync(`${root}${bin}`, "utf8").startsWith("#!/usr/bin/env node\n"));
  const r = spawnSync(`${root}${bin}`, ["--version"], { encoding: "utf8" });
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, `nbd-ts ${pkg.version}\n`);
});

test("nbd-ts --help lists the tools; each tool answers --version", () => {
  const help = tool(["--help"]);
  assert.is(help.status, 0);
  for (const t of ["info", "copy", "shell"]) {
    assert.match(help.stdout, new RegExp(`nbd-ts ${t} `));
    assert.is(tool([t, "--version"]).stdout, `nbd-ts ${t} ${pkg.version}\n`);
  }
});

test("no tool or an unknown one: status 2 and the list of tools on stderr", () => {
  for (const args of [[], ["bogus"]]) {
    const r = tool(args);
    assert.is(r.status, 2);
    assert.is(r.stdout, "");
    assert.match(r.stderr, /nbd-ts copy {2}SOURCE DESTINATION/);
  }
});

test.run();
