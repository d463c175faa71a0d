#!/usr/bin/env node
/**
 * nbd-ts: the package's command-line tools, after libnbd's nbdinfo, nbdcopy
 * and nbdsh.
 *
 *   nbd-ts info  …    (nbdinfo)
 *   nbd-ts copy  …    (nbdcopy)
 *   nbd-ts shell …    (nbdsh)
 *
 * Exit status: 0 success, 1 failure, 2 a mistake on the command line.
 * Errors go to stderr as "nbd-ts TOOL: message", with libnbd's message.
 */
import { Failure, UsageError } from "./args.js";

const USAGE = `
Tools for Network Block Device (NBD) servers, on nbd-ts:

    nbd-ts info  [--json] NBD-URI | [ CMD ARGS ... ]    like nbdinfo
    nbd-ts copy  SOURCE DESTINATION                     like nbdcopy
    nbd-ts shell [-u NBD-URI] [-c CODE]                 like nbdsh

    nbd-ts TOOL --help      usage of one tool
    nbd-ts --version
`;

interface Tool {
  main(argv: string[], prog: string): Promise<number>;
  USAGE: string;
}

const TOOLS: Record<string, () => Promise<Tool>> = {
  info: () => import("./info.js"),
  copy: () => import("./copy.js"),
  shell: () => import("./shell.js"),
};

async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === "--help" || name === "-h") {
    process.stdout.write(USAGE);
    return 0;
  }
  if (name === "--version" || name === "-V") {
    const { VERSION } = await import("../version.js");
    process.stdout.write(`nbd-ts ${VERSION}\n`);
    return 0;
  }
  const load = name === undefined ? undefined : TOOLS[name];
  if (!load) {
    process.stderr.write(`${name === undefined ? "nbd-ts: which tool?" : `nbd-ts: unknown tool '${name}'`}\n${USAGE}`);
    return 2;
  }
  const prog = `nbd-ts ${name}`;
  const tool = await load();
  try {
    return await tool.main(rest, prog);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${prog}: ${err.message}\n${tool.USAGE}`);
      return 2;
    }
    if (err instanceof Failure) {
      process.stderr.write(`${prog}: ${err.message}\n`);
      return err.status;
    }
    throw err;
  }
}

// Killed or interrupted: exit properly, so that the exit hook stops the servers we started and
// removes their socket directories (a signal's default action would leave them behind).
for (const [signal, number] of [["SIGINT", 2], ["SIGTERM", 15], ["SIGHUP", 1]] as const) {
  process.once(signal, () => process.exit(128 + number));
}

// Exit by running out of work, not process.exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2));
