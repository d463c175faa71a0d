/**
 * Runs each test file in its own process (they share nothing: not the
 * worker, not a failure), checks after each that it left no NBD server and
 * no socket dir behind, and ends with the line CI reads: "N passed, N failed".
 */
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { RUN_TAG, leftovers, snapshot } from "./leaks.js";

process.env[RUN_TAG] ??= String(process.pid);
const dir = fileURLToPath(new URL(".", import.meta.url));
const only = process.argv.slice(2);
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();

/** A test file that runs longer than this has hung: it is killed and counts as failed. */
const FILE_TIMEOUT_MS = Number(process.env.TEST_FILE_TIMEOUT_MS) || 180_000;

function run(file: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [dir + file], { stdio: ["ignore", "pipe", "inherit"] });
    const timer = setTimeout(() => {
      console.log(`# ${file} timed out after ${FILE_TIMEOUT_MS} ms`);
      child.kill("SIGKILL");
    }, FILE_TIMEOUT_MS);
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      process.stdout.write(d);
      output += d.toString();
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, output });
    });
  });
}

const count = (output: string, label: string): number => {
  const m = output.replace(/\x1b\[[0-9;]*m/g, "").match(new RegExp(`^\\s*${label}:\\s+(\\d+)`, "m"));
  return m ? Number(m[1]) : 0;
};

let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of files) {
  console.log(`\n# ${file}`);
  const before = snapshot();
  const { code, output } = await run(file);
  const total = count(output, "Total");
  const ok = count(output, "Passed");
  const skip = count(output, "Skipped");
  let bad = total - ok - skip;
  if (code !== 0 && bad === 0) {
    console.log(`# ${file} exited with status ${code}`);
    bad = 1;
  }
  const left = leftovers(before);
  if (left.length) {
    console.log(`# ${file} left behind:\n#   ${left.join("\n#   ")}`);
    bad += 1;
  }
  passed += ok;
  failed += bad;
  skipped += skip;
}
console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed ? 1 : 0);
