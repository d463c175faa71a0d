/**
 * Each call's documentation, worked out from its table entry the way
 * libnbd's generator writes its man pages: the C name, the version, the
 * permitted states, each argument (by its kind and name), the return value,
 * and the errors (those of its states, arguments and flags derived here,
 * then the entry's own `errors`). gen-docs.ts renders it twice: as TSDoc in
 * src/api/handle-methods.ts and as docs/api.md.
 */
import * as constants from "../constants.js";
import { sectionOf, type Section } from "./sections.js";
import { FAILS_ON_MINUS_ONE, cName, isPersist, type Arg, type Call, type ErrnoName, type Ret, type Shape, type State } from "./types.js";

/** The blocking Handle ("sync") or the Promise API of nbd-ts/async ("async"). */
export type Mode = "sync" | "async";

export interface Param {
  readonly name: string;
  readonly optional: boolean;
  /** Its TypeScript type, as the generated interface declares it. */
  readonly type: string;
  readonly text: string;
}

export interface Described {
  readonly key: string;
  readonly call: Call;
  readonly c: string;
  readonly section: Section;
  /** The table's summary as a sentence. */
  readonly summary: string;
  /** "libnbd 1.0", or "nbd-ts (not in libnbd)". */
  readonly origin: string;
  /** libnbd's manual page for the call, if libnbd has it. */
  readonly url?: string;
  readonly states: string;
  readonly params: readonly Param[];
  /** The TypeScript return type (Mode decides Promise or not). */
  readonly returnType: string;
  readonly returns: string;
  /** Errnos in the order they first come up, each with every cause. */
  readonly errors: readonly { readonly errno: ErrnoName; readonly why: readonly string[] }[];
}

const stateWords: Record<State, string> = {
  created: "newly created",
  connecting: "connecting",
  negotiating: "negotiating (opt mode)",
  connected: "connected with the server",
  closed: "closed (shut down)",
  dead: "dead",
};
const ALL_STATES = Object.keys(stateWords) as State[];

const either = (words: readonly string[], joiner = "or"): string =>
  words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} ${joiner} ${words[words.length - 1]}`;

/** A sentence: capitalised, with a full stop unless it asks. */
const sentence = (s: string): string => {
  const t = s.startsWith("nbd-ts") ? s : s.charAt(0).toUpperCase() + s.slice(1);
  return /[.?]$/.test(t) ? t : `${t}.`;
};

/** Constant names for values, found by prefix among the package's constants. */
function constantNames(prefix: string, keep: (value: number) => boolean): string[] {
  return Object.entries(constants)
    .filter((e): e is [string, number] => e[0].startsWith(prefix) && !e[0].endsWith("_MASK") && typeof e[1] === "number" && keep(e[1]))
    .sort((a, b) => a[1] - b[1])
    .map(([name]) => name);
}

const enumNames = (arg: Extract<Arg, { kind: "enum" }>): string[] =>
  constantNames(`${arg.name.split("_")[0]!.toUpperCase()}_`, (v) => arg.values.includes(v));

const flagNames = (arg: Extract<Arg, { kind: "flags" }>): string[] =>
  constantNames(`${arg.set.prefix}_`, (v) => (v & arg.allowed) === v && v !== 0);

const code = (s: string): string => `\`${s}\``;

/** What an argument is for, by its name (and kind where one name serves two). */
const meanings: Record<string, string> = {
  offset: "where the range starts, in bytes from the start of the export",
  count: "how many bytes the range covers",
  cookie: "the cookie an aio call returned",
  i: "which request, counting from 0",
  fd: "must be -1: the socket lives in nbd-ts's worker thread",
  timeout: "how long to wait, in milliseconds: -1 waits as long as it takes, 0 not at all",
  ms: "the limit in milliseconds; 0 turns it off",
  signum: "the signal to send (0 sends SIGTERM)",
  sock: "the file descriptor of a connected stream socket (Unix or TCP); the handle owns it from then on",
  dir: "the directory that holds the certificates",
  filename: "the path of the PSK file",
  unixsocket: "the path of the server's Unix domain socket",
  hostname: "a host name or address",
  port: "a port number or service name (a string, or a number)",
  export_name: "the export's name (at most 4096 bytes)",
  handle_name: "the name that the handle's debug messages carry",
  metacontext: "a meta context name, such as CONTEXT_BASE_ALLOCATION",
  name: "a meta context name, such as CONTEXT_BASE_ALLOCATION",
  socket_name: "the name the server finds in LISTEN_FDNAMES",
  uri: "an NBD URI (nbd://, nbds://, nbd+unix://, …)",
  username: "the TLS username",
  argv: "the server's command and its arguments (argv[0] is looked up in PATH)",
  contexts: "the meta contexts to report, each already negotiated",
  queries: "meta context queries to send instead of those addMetaContext collected",
};

/** What each callback shape is called with and what its return does (libnbd's semantics). */
const shapes: Record<Shape, string> = {
  chunk: "called for each piece of the reply as it arrives, as `(subbuf, offset, status, error)`: `subbuf` holds the bytes (valid only during the call), `offset` is where they belong in the export, `status` is READ_DATA, READ_HOLE or READ_ERROR. Return 0; -1 (or a throw) fails the read with `error.value`, or EPROTO if that is left 0",
  extent: "called once for each meta context in the reply, as `(metacontext, offset, entries, error)`: `entries` is a Uint32Array of (length, flags) pairs, the first starting at `offset`. Return 0; -1 (or a throw) fails the command with `error.value`, or EPROTO if that is left 0",
  extent64: "called once for each meta context in the reply, as `(metacontext, offset, entries, error)`: `entries` is a BigUint64Array of (length, flags) pairs, the first starting at `offset`. Return 0; -1 (or a throw) fails the command with `error.value`, or EPROTO if that is left 0",
  list: "called for each export the server lists, as `(name, description)`; what it returns is ignored",
  context: "called for each meta context the server replies with, as `(name)`; what it returns is ignored",
  completion: "called once when the command completes, as `(error)`: `error.value` is its errno, 0 if it succeeded. Return 1 to retire the command there and then (aioCommandCompleted will not see it), 0 to leave it to aioCommandCompleted",
  debug: "called with each debug message, as `(context, msg)`; what it returns is ignored",
};

function tsType(arg: Arg): string {
  switch (arg.kind) {
    case "bool": return "boolean";
    case "uint64": return "number | bigint";
    case "string": case "path": return "string";
    case "stringList": return "string[]";
    case "bytesIn": case "bytesOut": case "bytesPersistIn": case "bytesPersistOut": return "Uint8Array";
    case "port": return "string | number";
    case "closure": return `Shapes[${JSON.stringify(arg.shape)}]`;
    default: return "number";
  }
}

function bufferText(arg: Arg, mode: Mode): string {
  const out = arg.kind === "bytesOut" || arg.kind === "bytesPersistOut";
  const base = out ? "the buffer to read into; its length is the number of bytes to read" : "the data to write; its length is the number of bytes to write";
  if (!isPersist(arg)) return base;
  if (mode === "async") return `${base}. It is used in place: leave it alone until the command completes`;
  return out
    ? `${base}. It is filled when the command completes, before its completion callback runs: in place if it is a view of a SharedArrayBuffer, else through a copy`
    : `${base}. It is copied when the call is made, unless it is a view of a SharedArrayBuffer, which is sent from in place: then leave it alone until the command completes`;
}

function paramText(arg: Arg, mode: Mode, optional: boolean): string {
  switch (arg.kind) {
    case "bool": return `\`true\` to turn the setting on, \`false\` to turn it off (1 and 0 work too)`;
    case "uint64": return `${meanings[arg.name] ?? "an unsigned 64-bit value"} (a \`number\` or \`bigint\`, 0 to 2^64-1)`;
    case "int": return `${meanings[arg.name] ?? "an integer"}`;
    case "bytesIn": case "bytesOut": case "bytesPersistIn": case "bytesPersistOut": return bufferText(arg, mode);
    case "enum": return `one of ${either(enumNames(arg).map(code))}`;
    case "flags": {
      const names = flagNames(arg);
      const accepts = names.length ? `this call accepts ${either(names.map(code), "and")}` : "this call accepts none yet: pass 0";
      return `a mask of \`${arg.set.prefix}_*\` bits${optional ? ", default 0" : ""}: ${accepts}`;
    }
    case "closure": return `${shapes[arg.shape]}`;
    default: return `${meanings[arg.name] ?? "a string"}`;
  }
}

/** The errors its states give a call (invoke.ts's checkState). */
function stateErrors(call: Call): [ErrnoName, string][] {
  if (!call.states) return [];
  const errs: [ErrnoName, string][] = [];
  const forbidden = ALL_STATES.filter((s) => !call.states!.includes(s));
  if (forbidden.includes("created")) errs.push(["ENOTCONN", "the handle has not connected yet"]);
  const rest = forbidden.filter((s) => s !== "created");
  if (rest.length) errs.push(["EINVAL", `the handle is ${either(rest.map((s) => stateWords[s]))}`]);
  return errs;
}

/** The errors each argument's checks give (invoke.ts's check), and the callbacks' failures. */
function argErrors(call: Call, optargs: readonly Arg[]): [ErrnoName, string][] {
  const errs: [ErrnoName, string][] = [];
  for (const arg of [...call.args, ...optargs]) {
    const n = code(arg.name);
    const optional = optargs.includes(arg);
    switch (arg.kind) {
      case "bool": errs.push(["EINVAL", `${n} is not a boolean or number`]); break;
      case "int": errs.push(["EINVAL", `${n} is not an integer from -2^31+1 to 2^31-1`]); break;
      case "uint64": errs.push(["EINVAL", `${n} is not an integer from 0 to 2^64-1`]); break;
      case "string": case "path":
        errs.push(["EFAULT", `${n} is null or undefined`], ["EINVAL", `${n} is not a string, or has a NUL byte`]);
        break;
      case "stringList":
        errs.push(["EFAULT", `${n} is null or undefined`], ["EINVAL", `${n} is not an array of strings, or one has a NUL byte`]);
        break;
      case "port":
        errs.push(["EFAULT", `${n} is null or undefined`], ["EINVAL", `${n} is neither a string nor an integer from 0 to 65535`]);
        break;
      case "bytesIn": case "bytesOut": case "bytesPersistIn": case "bytesPersistOut":
        errs.push(["EFAULT", `${n} is null or undefined`], ["EINVAL", `${n} is not a Uint8Array`],
          ["ERANGE", `${n} is longer than 64 MiB (MAX_REQUEST_SIZE)`]);
        break;
      case "enum": errs.push(["EINVAL", `${n} is not ${either(enumNames(arg))}`]); break;
      case "flags": {
        const when = arg.set.commandFlags
          ? " (checked with STRICT_FLAGS, on by default; bits beyond the wire's 16 always)"
          : "";
        errs.push(["EINVAL", `${n} is not an integer from 0 to 2^32-1, or has a bit this call does not accept${when}`]);
        break;
      }
      case "closure":
        if (!optional) errs.push(["EFAULT", `${n} is null or undefined`]);
        errs.push(["EINVAL", `${n} is not a function`]);
        // A blocking call learns its callbacks' verdict before it returns; an aio call, at completion.
        if (FAILS_ON_MINUS_ONE.has(arg.shape) && call.ret !== "cookie") {
          errs.push(["EPROTO", `${n} returned -1 or threw, leaving \`error.value\` 0 (what it sets there is the errno instead)`]);
        }
        break;
    }
  }
  return errs;
}

const syncReturns: Record<Ret, string> = {
  err: "`0`",
  bool: "`1` (true) or `0` (false)",
  int: "a number, 0 or more",
  uint: "a number",
  int64: "a `bigint`, 0 or more",
  cookie: "the command's cookie, a `bigint` (1 or more)",
  string: "a string",
  staticString: "a string",
};
const failValue: Record<Ret, string> = {
  err: "`-1`", bool: "`-1`", int: "`-1`", uint: "`-1`", int64: "`-1n`", cookie: "`-1n`", string: "`null`", staticString: "`null`",
};

function returnType(ret: Ret, mode: Mode): string {
  const t = ret === "int64" || ret === "cookie" ? "bigint" : ret === "string" || ret === "staticString" ? "string" : "number";
  return mode === "async" ? `Promise<${t}>` : ret === "string" || ret === "staticString" ? "string | null" : t;
}

function returnsText(call: Call, mode: Mode): string {
  const ok = syncReturns[call.ret];
  if (mode === "async") {
    return call.mayFail === false
      ? `a promise of ${ok}; it does not reject while the handle is open`
      : `a promise of ${ok}; it rejects with an \`NbdError\` (its \`errno\`, \`code\` and libnbd's message) on failure`;
  }
  return call.mayFail === false
    ? `${ok}; this call does not fail while the handle is open`
    : `${ok}, or ${failValue[call.ret]} on failure, with the reason in \`getError()\` and \`getErrno()\``;
}

export function describe(key: string, call: Call, mode: Mode): Described {
  const c = cName(key, call);
  const optargs = call.optargs ?? [];
  const params = [...call.args, ...optargs].map((arg) => {
    const optional = optargs.includes(arg);
    return { name: arg.name, optional, type: tsType(arg), text: paramText(arg, mode, optional) };
  });
  const grouped = new Map<ErrnoName, string[]>();
  // The entry's own causes name arguments bare ("argv is empty"): mark them as code, as the derived ones are.
  const own = (call.errors ?? []).map(([errno, why]): [ErrnoName, string] =>
    [errno, params.reduce((w, p) => w.replace(new RegExp(`^${p.name}\\b`), code(p.name)), why)]);
  for (const [errno, why] of [...stateErrors(call), ...argErrors(call, optargs), ...own]) {
    const list = grouped.get(errno) ?? [];
    if (!list.includes(why)) list.push(why);
    grouped.set(errno, list);
  }
  const extension = call.since === "nbd-ts";
  return {
    key, call, c,
    section: sectionOf(key, call),
    summary: sentence(call.summary),
    origin: extension ? "nbd-ts (not in libnbd)" : `libnbd ${call.since}`,
    ...(!extension && { url: `https://libguestfs.org/${c}.3.html` }),
    states: call.states ? `when the handle is ${either(call.states.map((s) => stateWords[s]))}` : "in any state",
    params,
    returnType: returnType(call.ret, mode),
    returns: returnsText(call, mode),
    errors: [...grouped].map(([errno, why]) => ({ errno, why })),
  };
}
