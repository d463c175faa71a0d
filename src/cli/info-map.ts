/**
 * nbd-ts info --map [--totals]: the export's extents in one meta context
 * (base:allocation unless named), runs of one type merged, in nbdinfo's
 * columns or JSON.
 */
import { getError, type Handle } from "../index.js";
import { SIZE_MINIMUM } from "../constants.js";
import { Failure } from "./args.js";
import { ansi, fixed, general, jsonString } from "./format.js";
import { size, type Output, type Settings } from "./info.js";

export function doMap(h: Handle, s: Settings, out: Output): void {
  const map = s.map!;
  if (h.canMetaContext(map) !== 1) throw new Failure(`--map: server does not support metadata context "${map}"`);
  const minimum = Number(h.getBlockSize(SIZE_MINIMUM));
  const align = minimum > 0 ? minimum : 512;
  const maxLen = 2 ** 32 - align; // the largest aligned count that fits 32 bits
  const total = Number(size(h));

  // (length, type) pairs for the whole export, in order.
  const entries: number[] = [];
  for (let offset = 0; offset < total;) {
    const before = entries.length;
    const r = h.blockStatus(Math.min(total - offset, maxLen), offset, (context, _off, e) => {
      if (context === map) for (const v of e) entries.push(v);
      return 0;
    });
    if (r === -1) throw new Failure(getError()!);
    if (entries.length === before) throw new Failure("--map: server did not return any extents");
    for (let i = before; i < entries.length; i += 2) offset += entries[i]!;
  }
  if (s.totals) printTotals(entries, total, s, out);
  else printExtents(entries, s, out);
}

function printExtents(entries: number[], s: Settings, out: Output): void {
  const lines: string[] = [];
  let offset = 0;
  for (let i = 0; i < entries.length;) {
    const type = entries[i + 1]!;
    let len = 0;
    for (; i < entries.length && entries[i + 1] === type; i += 2) len += entries[i]!;
    const { text, fg, bg } = describe(s.map!, type);
    if (s.json) {
      lines.push(`{ "offset": ${offset}, "length": ${len}, "type": ${type}${text === undefined ? "" : `, "description": ${jsonString(text)}`}}`);
    } else {
      const line = `${String(offset).padStart(10)}  ${String(len).padStart(10)}  ${String(type).padStart(3)}${text === undefined ? "" : `  ${text}`}`;
      lines.push(s.colour && (fg || bg) ? `${fg ?? ""}${bg ?? ""}${line}${ansi.reset}` : line);
    }
    offset += len;
  }
  if (s.json) out.write(`[\n${lines.join(",\n")}\n]\n`);
  else out.write(lines.map((l) => `${l}\n`).join(""));
}

function printTotals(entries: number[], total: number, s: Settings, out: Output): void {
  if (total === 0) {
    if (s.json) out.write("[]\n");
    return;
  }
  const byType = new Map<number, number>();
  for (let i = 0; i < entries.length; i += 2) byType.set(entries[i + 1]!, (byType.get(entries[i + 1]!) ?? 0) + entries[i]!);
  const lines: string[] = [];
  for (const type of [...byType.keys()].sort((a, b) => a - b)) {
    const count = byType.get(type)!;
    if (count === 0) continue;
    const percent = (100 * count) / total;
    const { text, fg, bg } = describe(s.map!, type);
    if (s.json) {
      lines.push(`{ "size": ${count}, "percent": ${general(percent)}, "type": ${type}${text === undefined ? "" : `, "description": ${jsonString(text)}`} }`);
    } else {
      const line = `${String(count).padStart(10)} ${fixed(percent, 1).padStart(5)}% ${String(type).padStart(3)}${text === undefined ? "" : ` ${text}`}`;
      lines.push(s.colour && (fg || bg) ? `${fg ?? ""}${bg ?? ""}${line}${ansi.reset}` : line);
    }
  }
  if (s.json) out.write(`[\n${lines.join(",\n")}\n]\n`);
  else out.write(lines.map((l) => `${l}\n`).join(""));
}

/** What a type means in the contexts nbdinfo knows; undefined text for others. */
function describe(context: string, type: number): { text?: string; fg?: string; bg?: string } {
  if (context === "base:allocation") {
    return [{ text: "data", fg: ansi.bold }, { text: "hole" }, { text: "zero" }, { text: "hole,zero" }][type] ?? {};
  }
  if (context.startsWith("qemu:dirty-bitmap:")) {
    return [{ text: "clean", fg: ansi.green }, { text: "dirty", fg: ansi.red }][type] ?? {};
  }
  if (context === "qemu:allocation-depth") {
    if (type === 0) return { text: "absent" };
    if (type === 1) return { text: "local", fg: ansi.brightWhite, bg: ansi.bgBlack };
    return { text: `backing depth ${type}`, bg: ansi.bgLightGrey };
  }
  return {};
}
