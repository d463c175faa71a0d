/**
 * nbd-ts info: nbdinfo(1) on nbd-ts. The same modes (--size, --is/--can,
 * --map [--totals], --list, --content), the same text and the same --json
 * fields, so that scripts can switch between the two.
 *
 *   nbd-ts info [--json] NBD-URI | [ CMD ARGS … ] | -- CMD ARGS …
 */
import { spawnSync } from "node:child_process";
import { create, getError, type Handle } from "../index.js";
import { SIZE_MAXIMUM, SIZE_MINIMUM, SIZE_PREFERRED } from "../constants.js";
import { Failure, UsageError, endpoints, parse, type Endpoint, type OptionSpec } from "./args.js";
import { ansi, humanSize, jsonString } from "./format.js";
import { doMap } from "./info-map.js";

export const USAGE = `
Display information and metadata about NBD servers and exports:

    nbd-ts info [--json] NBD-URI | [ CMD ARGS ... ]
    nbd-ts info --size [--json] NBD-URI | [ CMD ARGS ... ]
    nbd-ts info --is read-only|rotational|tls NBD-URI | [ CMD ARGS ... ]
    nbd-ts info --can cache|connect|... NBD-URI | [ CMD ARGS ... ]
    nbd-ts info --map[=CONTEXT] [--totals] [--json] NBD-URI | [ CMD ARGS ... ]
    nbd-ts info -L|--list [--json] NBD-URI | [ CMD ARGS ... ]

A server to run is given as [ CMD ARGS ... ] (separate words) or as
everything after --: nbd-ts info -- nbdkit memory 1G. It is started by
systemd socket activation, as nbdinfo does.

Other options:

    --content, --no-content   probe the first 8K of the export with file(1)
                              (default: on, except with --list)
    --color, --no-color       ANSI colours (default: when stdout is a terminal)
    nbd-ts info --help
    nbd-ts info --version

Examples:

    nbd-ts info nbd://localhost
    nbd-ts info "nbd+unix:///?socket=/tmp/unixsock"
    nbd-ts info --size nbd://example.com
    nbd-ts info --can connect nbd://example.com
    nbd-ts info --map -- [ qemu-nbd -r -f qcow2 file.qcow2 ]
    nbd-ts info --json --list nbd://example.com

Exit status: 0 on success; 1 on failure; 2 for a mistake on the command
line, and with --is/--can when the answer is false.
`;

const OPTIONS: OptionSpec[] = [
  { name: "help", short: "h" },
  { name: "version", short: "V" },
  { name: "json" },
  { name: "size" },
  { name: "list", short: "L" },
  { name: "map", arg: "optional" },
  { name: "totals", aliases: ["total"] },
  { name: "can", aliases: ["is"], arg: "required" },
  { name: "content" },
  { name: "no-content" },
  { name: "color", aliases: ["colour", "colors", "colours"] },
  { name: "no-color", aliases: ["no-colour", "no-colors", "no-colours"] },
];

export interface Settings {
  prog: string;
  json: boolean;
  colour: boolean;
  listAll: boolean;
  probeContent: boolean;
  map: string | undefined;
  totals: boolean;
  target: Endpoint;
}

/** What the tool writes to stdout: gathered and written at the end, so a failure prints nothing there. */
export class Output {
  private parts: string[] = [];
  constructor(private readonly colour: boolean) {}
  write(s: string): void {
    this.parts.push(s);
  }
  /** Text in a colour (when colours are on). */
  paint(colour: string | undefined, s: string): void {
    this.parts.push(this.colour && colour ? `${colour}${s}${ansi.reset}` : s);
  }
  text(): string {
    return this.parts.join("");
  }
}

export async function main(argv: string[], prog: string): Promise<number> {
  const p = parse(argv, OPTIONS);
  const has = (name: string) => p.options.some((o) => o.name === name);
  const last = (name: string) => p.options.filter((o) => o.name === name).at(-1);
  if (has("help")) return usage(0);
  if (has("version")) {
    const { VERSION } = await import("../version.js");
    process.stdout.write(`${prog} ${VERSION}\n`);
    return 0;
  }
  const eps = endpoints(p, true);
  if (eps.length !== 1) throw new UsageError(eps.length ? "give one NBD URI or one [ CMD ... ]" : "missing NBD URI or [ CMD ... ]");

  let colour = process.stdout.isTTY === true;
  for (const o of p.options) {
    if (o.name === "color") colour = true;
    if (o.name === "no-color") colour = false;
  }
  const can = last("can")?.value;
  const map = has("map") ? last("map")!.value ?? "base:allocation" : undefined;
  const sizeOnly = has("size");
  const listAll = has("list");
  const totals = has("totals");
  if (Number(listAll) + Number(can !== undefined) + Number(map !== undefined) + Number(sizeOnly) > 1) {
    throw new UsageError("you cannot use --list, --map and --size together.");
  }
  if (has("content") && has("no-content")) throw new UsageError("you cannot use --content and --no-content together.");
  if (totals && map === undefined) throw new UsageError("you must use --totals only with --map option.");
  let probeContent = !listAll;
  if (has("content")) probeContent = true;
  if (has("no-content") || can !== undefined || map !== undefined) probeContent = false;

  const s: Settings = { prog, json: has("json"), colour, listAll, probeContent, map, totals, target: eps[0]! };
  const out = new Output(colour);
  const h = create();
  if (!h) throw new Failure(getError() ?? "nbd_create failed");
  let status = 0;
  try {
    h.setUriAllowLocalFile(true); // ?tls-psk-file=
    if (can === undefined && map === undefined && !sizeOnly) {
      h.setOptMode(true);
      h.setFullInfo(true);
    }
    if (map !== undefined) h.addMetaContext(map);
    connect(h, s);

    const exports = listAll ? collectExports(h, s) : [];
    if (sizeOnly) out.write(`${size(h)}\n`);
    else if (can !== undefined) status = canQuery(h, can);
    else if (map !== undefined) doMap(h, s, out);
    else {
      const protocol = h.getProtocol();
      const tls = h.getTlsNegotiated();
      const sr = h.getStructuredRepliesNegotiated();
      if (!s.json) {
        if (protocol !== null) {
          let line = `protocol: ${protocol}`;
          if (tls >= 0) line += ` ${tls ? "with" : "without"} TLS`;
          if (sr >= 0) line += `, using ${sr ? "structured" : "simple"} packets`;
          out.paint(ansi.grey, `${line}\n`);
        }
      } else {
        out.write("{\n");
        if (protocol !== null) out.write(`"protocol": ${jsonString(protocol)},\n`);
        if (tls >= 0) out.write(`"TLS": ${tls ? "true" : "false"},\n`);
        if (sr >= 0) out.write(`"structured": ${sr ? "true" : "false"},\n`);
      }
      const blocks: string[] = [];
      let ok = true;
      if (!listAll) ok = showOneExport(h, s, null, out, blocks);
      else ok = listAllExports(h, s, exports, out, blocks);
      if (s.json) out.write(blocks.length ? `"exports": [\n${blocks.join(",\n")} ]\n}\n` : `"exports": []\n}\n`);
      if (!ok) status = 1;
    }
    h.optAbort();
    h.shutdown();
  } finally {
    h.close();
  }
  process.stdout.write(out.text());
  return status;
}

function usage(status: number): number {
  (status === 0 ? process.stdout : process.stderr).write(USAGE);
  return status;
}

/** Connects as nbdinfo does: the URI, or the command by systemd socket activation. */
export function connect(h: Handle, s: Settings): void {
  const r = s.target.kind === "name" ? h.connectUri(s.target.name) : h.connectSystemdSocketActivation(s.target.argv);
  if (r === -1) throw new Failure(getError()!);
}

export function size(h: Handle): bigint {
  const size = h.getSize();
  if (size === -1n) throw new Failure(getError()!);
  return size;
}

/** --is / --can: the exit status says it (0 true, 2 false). */
function canQuery(h: Handle, what: string): number {
  const w = what.toLowerCase();
  const is = (...names: string[]) => names.includes(w);
  let feature: number;
  if (is("connect", "read")) feature = 1;
  else if (is("tls")) feature = h.getTlsNegotiated();
  else if (is("sr", "structured", "structured reply", "structured-reply", "structured_reply", "structured replies", "structured-replies", "structured_replies")) {
    feature = h.getStructuredRepliesNegotiated();
  } else if (is("readonly", "read-only", "read_only")) feature = h.isReadOnly();
  else if (is("write")) {
    feature = h.isReadOnly();
    if (feature >= 0) feature = feature ? 0 : 1;
  } else if (is("rotational")) feature = h.isRotational();
  else if (is("cache")) feature = h.canCache();
  else if (is("df")) feature = h.canDf();
  else if (is("fastzero", "fast-zero", "fast_zero")) feature = h.canFastZero();
  else if (is("flush")) feature = h.canFlush();
  else if (is("fua")) feature = h.canFua();
  else if (is("multiconn", "multi-conn", "multi_conn")) feature = h.canMultiConn();
  else if (is("trim")) feature = h.canTrim();
  else if (is("zero")) feature = h.canZero();
  else throw new Failure(`unknown --can or --is option: ${what}`);
  if (feature === -1) throw new Failure(getError()!);
  return feature ? 0 : 2;
}

interface Export { name: string; description: string }

/** --list: the server's exports, asked for during negotiation. */
function collectExports(h: Handle, s: Settings): Export[] {
  const list: Export[] = [];
  if (h.optList((name, description) => (list.push({ name, description }), 0)) === -1) throw new Failure(getError()!);
  // Each export will get its own connection; some servers serve one at a time.
  if (s.probeContent) h.optAbort();
  return list;
}

function listAllExports(h: Handle, s: Settings, list: Export[], out: Output, blocks: string[]): boolean {
  let ok = true;
  for (const e of list) {
    let h2 = h;
    if (s.probeContent) {
      // A connection of its own, in opt mode, to read from this export.
      const fresh = create();
      if (!fresh) throw new Failure(getError()!);
      h2 = fresh;
      try {
        h2.setUriAllowLocalFile(true);
        h2.setOptMode(true);
        h2.setRequestMetaContext(false);
        h2.setFullInfo(true);
        connect(h2, s);
        if (h2.setExportName(e.name) === -1) throw new Failure(getError()!);
        if (!showOneExport(h2, s, e.description, out, blocks)) ok = false;
        h2.shutdown();
      } finally {
        h2.close();
      }
    } else {
      if (h.setExportName(e.name) === -1) throw new Failure(getError()!);
      if (!showOneExport(h, s, e.description, out, blocks)) ok = false;
    }
  }
  return ok;
}

const bool = (b: number) => (b ? "true" : "false");

/**
 * One export's details. In opt mode it asks with NBD_OPT_INFO (falling back
 * to NBD_OPT_GO); an export the server refuses is reported on stderr and
 * skipped, so that --list can go on with the others.
 */
function showOneExport(h: Handle, s: Settings, desc: string | null, out: Output, blocks: string[]): boolean {
  h.setRequestMetaContext(false);
  if (h.aioIsNegotiating() && h.optInfo() === -1 && h.optGo() === -1) {
    let msg = `${s.prog}: ${getError()}`;
    const name = h.getExportName();
    if (name !== null) msg += name === "" ? " for the default export" : ` for export: ${name}`;
    process.stderr.write(`${msg}\n`);
    if (!s.listAll) process.stderr.write(`${s.prog}: suggestion: to list all exports on the server, use --list\n`);
    return false;
  }
  const sz = size(h);
  const human = humanSize(sz);
  const uri = s.target.kind === "name" ? h.getUri() : null; // a subprocess's URI means nothing once it is gone
  const exportName = h.getCanonicalExportName() ?? h.getExportName();
  if (exportName === null) throw new Failure(getError()!);
  if (desc === null) desc = h.getExportDescription();
  const flags: [string, number][] = [
    ["is_rotational", h.isRotational()],
    ["is_read_only", h.isReadOnly()],
    ["can_cache", h.canCache()],
    ["can_df", h.canDf()],
    ["can_fast_zero", h.canFastZero()],
    ["can_flush", h.canFlush()],
    ["can_fua", h.canFua()],
    ["can_multi_conn", h.canMultiConn()],
    ["can_trim", h.canTrim()],
    ["can_zero", h.canZero()],
  ];
  const blockSizes: [string, bigint][] = [
    ["block_size_minimum", h.getBlockSize(SIZE_MINIMUM)],
    ["block_size_preferred", h.getBlockSize(SIZE_PREFERRED)],
    ["block_size_maximum", h.getBlockSize(SIZE_MAXIMUM)],
  ];
  const contexts: string[] = [];
  const showContexts = h.optListMetaContext((name) => (contexts.push(name), 0)) !== -1;
  // Last: reading the content ends negotiation.
  const content = getContent(h, s, sz);

  if (!s.json) {
    out.paint(ansi.bold, `export=${jsonString(exportName)}:\n`);
    if (desc) out.write(`\tdescription: ${desc}\n`);
    out.write(human.human ? `\texport-size: ${sz} (${human.text})\n` : `\texport-size: ${sz}\n`);
    if (content !== null) out.write(`\tcontent: ${content}\n`);
    if (uri !== null) out.write(`\turi: ${uri}\n`);
    if (showContexts) out.paint(ansi.grey, `\tcontexts:\n${contexts.map((c) => `\t\t${c}\n`).join("")}`);
    for (const [name, value] of flags) {
      if (value < 0) continue;
      const colour = name === "is_rotational" ? ansi.grey : name === "is_read_only" ? undefined : value ? ansi.green : ansi.red;
      out.paint(colour, `\t${name}: ${bool(value)}\n`);
    }
    for (const [name, value] of blockSizes) if (value > 0n) out.write(`\t${name}: ${value}\n`);
    return true;
  }
  const fields: string[] = [`\t"export-name": ${jsonString(exportName)},\n`];
  if (desc) fields.push(`\t"description": ${jsonString(desc)},\n`);
  if (content !== null) fields.push(`\t"content": ${jsonString(content)},\n`);
  if (uri !== null) fields.push(`\t"uri": ${jsonString(uri)},\n`);
  if (showContexts) fields.push(`\t"contexts": [\n${contexts.map((c) => `\t\t${jsonString(c)}`).join(",\n")}${contexts.length ? "\n" : ""}\t],\n`);
  for (const [name, value] of flags) if (value >= 0) fields.push(`\t"${name}": ${bool(value)},\n`);
  for (const [name, value] of blockSizes) if (value > 0n) fields.push(`\t"${name}": ${value},\n`);
  fields.push(`\t"export-size": ${sz},\n`, `\t"export-size-str": "${human.text}"\n`);
  blocks.push(`\t{\n${fields.join("")}\t}`);
  return true;
}

/** What file(1) makes of the first 8K of the export; null when it cannot tell (best effort, as nbdinfo). */
function getContent(h: Handle, s: Settings, sz: bigint): string | null {
  if (!s.probeContent) return null;
  if (h.aioIsNegotiating() && h.optGo() === -1) throw new Failure(getError()!);
  const buf = new Uint8Array(Number(sz < 8192n ? sz : 8192n));
  if (buf.length && h.pread(buf, 0) === -1) return null;
  const r = spawnSync("file", ["-b", "-"], { input: buf, encoding: "utf8" });
  if (r.error || r.status !== 0) return null;
  const line = r.stdout.split("\n")[0];
  return line === undefined || r.stdout === "" ? null : line;
}
