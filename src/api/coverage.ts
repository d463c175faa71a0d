/**
 * Renders the README's API coverage table from the API table, so the two
 * cannot drift (test/readme.test.ts compares them). To refresh README.md:
 *
 *   npm run build && node dist/src/api/coverage.js README.md
 */
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { API, HANDWRITTEN } from "./table.js";
import { cName, type Call, type Ret } from "./types.js";

export const BEGIN = "<!-- api-table:begin (generated from src/api/table.ts) -->";
export const END = "<!-- api-table:end -->";

const returns: Record<Ret, string> = {
  err: "`0` / `-1`",
  bool: "`1`, `0` / `-1`",
  int: "`number` / `-1`",
  uint: "`number`",
  int64: "`bigint` / `-1n`",
  cookie: "cookie `bigint` / `-1n`",
  string: "`string` / `null`",
  staticString: "`string` / `null`",
};

function signature(key: string, call: Call): string {
  const args = call.args.map((a) => a.name);
  const opt = (call.optargs ?? []).map((a) => `${a.name}?`);
  return `h.${key}(${[...args, ...opt].join(", ")})`;
}

export function coverageTable(): string {
  const rows = [
    "| C call | nbd-ts | returns (ok / error) | permitted states | since | summary |",
    "|---|---|---|---|---|---|",
  ];
  for (const [c, h] of Object.entries(HANDWRITTEN)) {
    rows.push(`| \`${c}\` | \`${h.ts}\` | | any | ${h.since} | ${h.summary} |`);
  }
  for (const [key, call] of Object.entries(API) as [string, Call][]) {
    const ret = call.mayFail === false ? returns[call.ret].replace(/ \/ .*/, " (never fails)") : returns[call.ret];
    const states = call.states?.join(", ") ?? "any";
    rows.push(`| \`${cName(key, call)}\` | \`${signature(key, call)}\` | ${ret} | ${states} | ${call.since} | ${call.summary} |`);
  }
  return rows.join("\n");
}

/** README text with the generated block replaced. */
export function withTable(readme: string): string {
  const start = readme.indexOf(BEGIN);
  const end = readme.indexOf(END);
  if (start < 0 || end < start) throw new Error(`README has no ${BEGIN} … ${END} block`);
  return `${readme.slice(0, start)}${BEGIN}\n${coverageTable()}\n${readme.slice(end)}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2]) {
  const path = process.argv[2];
  writeFileSync(path, withTable(readFileSync(path, "utf8")));
}
