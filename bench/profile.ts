/**
 * Summarises `node --cpu-prof` profiles: self time by function, largest
 * first, one table per file (each thread writes its own).
 *
 *   ONLY=lat ROUNDS=1 NBD_TS_WORKER_EXEC_ARGV="--cpu-prof --cpu-prof-dir=prof" \
 *     node --cpu-prof --cpu-prof-dir=prof dist/bench/run.js
 *   node dist/bench/profile.js prof/*.cpuprofile [TOP]
 *
 * Time a thread spends blocked inside a function (Atomics.wait, a system
 * call) counts as that function's; "(idle)" is a thread's event loop asleep.
 */
import { readFileSync } from "node:fs";

interface Profile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
  timeDeltas: number[];
}

const args = process.argv.slice(2);
const top = /^\d+$/.test(args.at(-1) ?? "") ? Number(args.pop()) : 20;
for (const file of args) {
  const p = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const frames = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
  const self = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const f = frames.get(id)!;
    const where = f.url.replace(/^.*\/(dist|node_modules)\//, "$1/");
    const key = `${f.functionName || "(anonymous)"} ${where}${where ? `:${f.lineNumber + 1}` : ""}`;
    const dt = p.timeDeltas[i] ?? 0;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  });
  console.log(`\n${file}: ${(total / 1000).toFixed(0)} ms`);
  for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((100 * us) / total).toFixed(1).padStart(5)}% ${(us / 1000).toFixed(0).padStart(6)} ms  ${key}`);
  }
}
