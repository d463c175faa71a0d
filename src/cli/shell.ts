/**
 * nbd-ts shell: nbdsh(1) for nbd-ts. A Node REPL with nbd-ts in scope (as
 * `nbd` and each export by name) and a handle `h`, connected with -u URI or
 * to a server it runs; or, with -c, code run without a prompt.
 *
 *   nbd-ts shell [-u NBD-URI] [-c CODE]… [-- CMD ARGS… | [ CMD ARGS … ]]
 */
import { readFileSync } from "node:fs";
import repl from "node:repl";
import { createRequire } from "node:module";
import { Script } from "node:vm";
import * as nbd from "../index.js";
import { getError, type Handle } from "../index.js";
import { Failure, UsageError, endpoints, parse, type OptionSpec } from "./args.js";

export const USAGE = `
Network Block Device (NBD) shell, on nbd-ts:

    nbd-ts shell [-n] [--opt-mode] [--base-allocation] [-v]
                 [-u NBD-URI | -- CMD ARGS ... | [ CMD ARGS ... ]]
                 [-c CODE]...

    -u, --uri NBD-URI     connect h to NBD-URI (h.connectUri)
    -- CMD ARGS ...       run a server and connect h to it by systemd socket
                          activation (h.connectSystemdSocketActivation)
    -c, --command CODE    run JavaScript instead of the interactive shell
                          (may be given more than once; "-c -" reads stdin)
    --opt-mode            h.setOptMode(true) before connecting
    --base-allocation     h.addMetaContext("base:allocation") before connecting
    -n                    do not create the handle h
    -v, --verbose         libnbd debug messages (LIBNBD_DEBUG=1)
    -V, --version         display the version

The connection is made before any -c code runs. Every nbd-ts export is in
scope (create, getError, CMD_FLAG_FUA, ...), and all of them as nbd.*; in
the shell, Tab completes h.'s methods. -c code may use await and require()
(require("nbd-ts/async") for the Promise API).

Examples:

    nbd-ts shell -u nbd://localhost -c 'console.log(h.getSize())'
    nbd-ts shell -c - -- nbdkit memory 1M < script.js

Exit status: 0 on success; 1 if -c code throws or the connection fails;
2 for a mistake on the command line.
`;

const OPTIONS: OptionSpec[] = [
  { name: "help", short: "h" },
  { name: "version", short: "V" },
  { name: "command", short: "c", arg: "required" },
  { name: "uri", short: "u", aliases: ["connect"], arg: "required" },
  { name: "opt-mode" },
  { name: "base-allocation" },
  { name: "n", short: "n" },
  { name: "verbose", short: "v" },
];

/** nbdsh's welcome, for JavaScript. */
function banner(h: Handle | null): string {
  const example = (code: string, what: string) => `${code.padEnd(44)} // ${what}\n`;
  let text = "\nWelcome to nbd-ts shell, for interacting with\nNetwork Block Device (NBD) servers.\n\n";
  text += "nbd-ts is in scope (each export by name, and all of it as nbd)";
  if (!h) text += ".\n\n" + example("h = create()", "Create a new handle.");
  else {
    text += ",\nand there is an open NBD handle called h.\n\n";
    if (h.aioIsCreated() === 1) text += example('h.connectUri("nbd://localhost")', "Connect to a server.");
  }
  text += example("h.getSize()", "Get size of the remote disk.");
  text += example("buf = new Uint8Array(512); h.pread(buf, 0)", "Read the first sector.");
  text += example(".exit or Ctrl-D", "Quit the shell.");
  text += example(".help", "The REPL's own commands.");
  return `${text}\n`;
}

export async function main(argv: string[], prog: string): Promise<number> {
  const p = parse(argv, OPTIONS);
  const has = (name: string) => p.options.some((o) => o.name === name);
  if (has("help")) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (has("version")) {
    const { VERSION } = await import("../version.js");
    process.stdout.write(`${prog} ${VERSION}\n`);
    return 0;
  }
  const eps = endpoints(p, true);
  if (eps.length > 1 || eps[0]?.kind === "name") throw new UsageError(`unexpected operand '${p.operands.join(" ")}': give a server as -- CMD ARGS ... or [ CMD ARGS ... ], a URI with -u`);
  const uris = p.options.filter((o) => o.name === "uri");
  const server = eps[0]?.kind === "command" ? eps[0].argv : undefined;
  if (uris.length + (server ? 1 : 0) > 1) throw new UsageError("connect to one server: one -u URI or one server command");
  const noHandle = has("n");
  if (noHandle && (uris.length || server || has("opt-mode") || has("base-allocation"))) {
    throw new UsageError("-n cannot be used with --base-allocation, --opt-mode, --uri or a server command");
  }
  if (has("verbose")) process.env.LIBNBD_DEBUG = "1";

  const scope = globalThis as Record<string, unknown>;
  for (const [name, value] of Object.entries(nbd)) scope[name] = value;
  scope.nbd = nbd;
  scope.require ??= createRequire(import.meta.url);
  let h: Handle | null = null;
  if (!noHandle) {
    h = nbd.create();
    if (!h) throw new Failure(getError() ?? "nbd_create failed");
    h.setHandleName("nbdsh");
    scope.h = h;
  }
  const commands = p.options.filter((o) => o.name === "command").map((o) => o.value!);
  try {
    if (h) {
      // As nbdsh: settings first, then the connection, then the code.
      if (has("opt-mode")) h.setOptMode(true);
      if (has("base-allocation")) h.addMetaContext(nbd.CONTEXT_BASE_ALLOCATION);
      const r = uris.length ? h.connectUri(uris[0]!.value!) : server ? h.connectSystemdSocketActivation(server) : 0;
      if (r === -1) throw new Failure(`command line script failed: ${getError()}`);
    }
    if (commands.length === 0) return await interactive(h);
    for (const code of commands) {
      try {
        await run(code === "-" ? readFileSync(0, "utf8") : code, code === "-" ? "stdin" : "-c");
      } catch (err) {
        if (process.env.LIBNBD_DEBUG === "1" && err instanceof Error) process.stderr.write(`${err.stack}\n`);
        throw new Failure(`command line script failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    return 0;
  } finally {
    (scope.h as Handle | undefined)?.close?.(); // the one in scope now: the code may have made a new h
    h?.close();
    // As nbdsh, the end of the code is the end: an async handle it left open must not keep the process
    // running (the exit hook still stops the servers such handles started).
    setImmediate(() => process.exit());
  }
}

/**
 * Runs code as a script in the global scope, so that declarations persist
 * from one -c to the next; code with top-level await runs as the body of an
 * async function instead. Scripts have no import(): require() is in scope.
 */
async function run(code: string, filename: string): Promise<void> {
  let script: Script;
  try {
    script = new Script(code, { filename });
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    try {
      script = new Script(`(async () => {${code}\n})()`, { filename });
    } catch {
      throw err;
    }
  }
  await script.runInThisContext();
}

/** The REPL, until .exit or end of input. Prompts and the banner only when a person is typing. */
function interactive(h: Handle | null): Promise<number> {
  const tty = process.stdin.isTTY === true;
  if (tty) process.stderr.write(banner(h));
  const server = repl.start({ prompt: tty ? "nbd> " : "", useGlobal: true, ignoreUndefined: true });
  return new Promise((resolve) => server.on("exit", () => resolve(0)));
}
