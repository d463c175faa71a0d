/**
 * Command-line parsing for the tools, after getopt_long as libnbd's tools use
 * it: long options (`--map`, `--map=MAP`, `--can zero`), short options that
 * cluster (`-pv`, `-C4`, `-C 4`), options anywhere among the operands, and
 * `--` to end them. A `[ CMD ARGS … ]` group is taken verbatim, so a
 * server's own flags inside it never need the `--` that nbdinfo asks for.
 */

export interface OptionSpec {
  /** The name the tool sees; also its long form (`--name`). */
  readonly name: string;
  /** Other long spellings (`colour` for `color`). */
  readonly aliases?: readonly string[];
  readonly short?: string;
  /** "required": `--opt V` or `--opt=V`; "optional": only `--opt=V`. */
  readonly arg?: "required" | "optional";
}

export interface Parsed {
  /** Options in command-line order (some tools replay them in order). */
  readonly options: { name: string; value: string | undefined }[];
  readonly operands: string[];
  /** Operands at this index and after came after `--`. */
  readonly dashDash: number;
}

/** A mistake in the command line: the tool prints it with its usage and exits 2. */
export class UsageError extends Error {}

/** A failure at run time: the tool prints `PROG: message` and exits with `status` (1 unless said). */
export class Failure extends Error {
  constructor(message: string, readonly status = 1) {
    super(message);
  }
}

export function parse(argv: readonly string[], specs: readonly OptionSpec[]): Parsed {
  const byLong = new Map<string, OptionSpec>();
  const byShort = new Map<string, OptionSpec>();
  for (const s of specs) {
    for (const l of [s.name, ...(s.aliases ?? [])]) byLong.set(l, s);
    if (s.short) byShort.set(s.short, s);
  }
  const options: Parsed["options"] = [];
  const operands: string[] = [];
  let dashDash = -1;

  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (dashDash >= 0 || a === "-" || !a.startsWith("-")) {
      if (a === "[" && dashDash < 0) {
        // A subprocess: everything up to "]" belongs to it.
        const end = argv.indexOf("]", i + 1);
        if (end < 0) throw new UsageError("'[' without a matching ']'");
        operands.push(...argv.slice(i, end + 1));
        i = end;
      } else operands.push(a);
      continue;
    }
    if (a === "--") {
      dashDash = operands.length;
      continue;
    }
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      const name = a.slice(2, eq < 0 ? undefined : eq);
      const spec = byLong.get(name);
      if (!spec) throw new UsageError(`unrecognized option '--${name}'`);
      let value = eq < 0 ? undefined : a.slice(eq + 1);
      if (value !== undefined && !spec.arg) throw new UsageError(`option '--${name}' doesn't allow an argument`);
      if (value === undefined && spec.arg === "required") {
        if (i + 1 >= argv.length) throw new UsageError(`option '--${name}' requires an argument`);
        value = argv[++i];
      }
      options.push({ name: spec.name, value });
      continue;
    }
    // A cluster of short options; one that takes an argument ends it.
    for (let j = 1; j < a.length; j++) {
      const spec = byShort.get(a[j]!);
      if (!spec) throw new UsageError(`invalid option -- '${a[j]}'`);
      if (!spec.arg) {
        options.push({ name: spec.name, value: undefined });
        continue;
      }
      let value: string | undefined = a.slice(j + 1);
      if (value === "") {
        if (spec.arg === "optional") value = undefined;
        else if (i + 1 >= argv.length) throw new UsageError(`option requires an argument -- '${a[j]}'`);
        else value = argv[++i];
      }
      options.push({ name: spec.name, value });
      break;
    }
  }
  return { options, operands, dashDash };
}

/** Where to find an NBD export: a URI (or a local name, for copy), or a server to run. */
export type Endpoint = { kind: "name"; name: string } | { kind: "command"; argv: string[] };

/**
 * Splits operands into endpoints: `[ CMD ARGS … ]` groups and single words.
 * With `commandAfterDashDash`, several words after `--` that are not in
 * brackets are one command (`nbd-ts info -- nbdkit memory 1G`).
 */
export function endpoints(p: Parsed, commandAfterDashDash = false): Endpoint[] {
  const ops = p.operands;
  if (commandAfterDashDash && p.dashDash === 0 && ops.length >= 2 && ops[0] !== "[") {
    return [{ kind: "command", argv: [...ops] }];
  }
  const out: Endpoint[] = [];
  for (let i = 0; i < ops.length; i++) {
    if (ops[i] === "[") {
      const end = ops.indexOf("]", i + 1);
      if (end < 0) throw new UsageError("'[' without a matching ']'");
      if (end === i + 1) throw new UsageError("'[ ]' needs a command between the brackets");
      out.push({ kind: "command", argv: ops.slice(i + 1, end) });
      i = end;
    } else out.push({ kind: "name", name: ops[i]! });
  }
  return out;
}

/** An unsigned integer option value, or a usage error naming the option. */
export function unsigned(option: string, value: string | undefined): number {
  if (value === undefined || !/^\d+$/.test(value)) throw new UsageError(`--${option}: could not parse: ${value ?? ""}`);
  return Number(value);
}

/** A size with an optional K/M/G suffix (powers of 1024), as `--request-size=1M`. */
export function size(option: string, value: string | undefined): number {
  const m = value?.match(/^(\d+)([kKmMgG]?)$/);
  if (!m) throw new UsageError(`--${option}: could not parse: ${value ?? ""}`);
  const shift = { "": 0, k: 10, m: 20, g: 30 }[m[2]!.toLowerCase() as "" | "k" | "m" | "g"];
  return Number(m[1]) * 2 ** shift;
}
