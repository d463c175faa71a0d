/**
 * The tools' number formats against C's printf (Python's % formatting
 * rounds as glibc does: the exact binary value, ties to even), and
 * nbdinfo's JSON strings and human sizes.
 */
import { spawnSync } from "node:child_process";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { fixed, general, humanSize, jsonString } from "../src/cli/format.js";

const values: number[] = [0, 0.25, 0.75, 12.25, 1.953125, 1.171875, 0.05, 99.95, 99.96, 100, 9.96, 1e-5, 0.0001, 0.00012345678,
  123456.5, 999999.5, 1e6, 1234567, 0.1, 2 / 3, 50, 33.333333333333336];
for (let k = 0; k <= 256; k++) values.push((100 * k) / 256);
for (let k = 0; k <= 400; k += 7) values.push((100 * k) / 400);
let seed = 12345;
for (let i = 0; i < 200; i++) {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  values.push((100 * seed) / 2 ** 31);
}

test("fixed(x, 1) and general(x) print what printf's %.1f and %g print", () => {
  const py = spawnSync("/usr/bin/python3", ["-c", "import json,sys\nfor x in json.load(sys.stdin): print('%.1f %.3f %g' % (x, x, x))"],
    { input: JSON.stringify(values), encoding: "utf8" });
  assert.is(py.status, 0, py.stderr);
  const lines = py.stdout.trimEnd().split("\n");
  assert.is(lines.length, values.length);
  values.forEach((x, i) => {
    assert.is(`${fixed(x, 1)} ${fixed(x, 3)} ${general(x)}`, lines[i], `x = ${x}`);
  });
});

test("human sizes as nbdinfo's: the largest unit that divides exactly", () => {
  assert.equal(humanSize(0n), { text: "0", human: false });
  assert.equal(humanSize(3000n), { text: "3000", human: false });
  assert.equal(humanSize(1048576n), { text: "1M", human: true });
  assert.equal(humanSize(2125119488n), { text: "2075312K", human: true });
  assert.equal(humanSize(1n << 60n), { text: "1E", human: true });
  assert.equal(humanSize(1n << 70n), { text: "1024E", human: true });
});

test("JSON strings escape quotes, backslashes and control characters, and nothing else", () => {
  assert.is(jsonString('a"b\\c\td\u0001é'), '"a\\"b\\\\c\\u0009d\\u0001é"');
  assert.equal(JSON.parse(jsonString('a"b\\c\td\u0001é')), 'a"b\\c\td\u0001é');
});

test.run();
