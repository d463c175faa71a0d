/**
 * libnbd's examples/list-exports.c, line for line: list a server's exports
 * in option mode, ask which one to use, then finish connecting to it and
 * print its size.
 *
 *   node dist/examples/list-exports.js SOCKET
 *
 * With qemu-nbd (one export):
 *
 *   $ qemu-nbd -x hello -t -k /tmp/sock disk.img
 *   $ node dist/examples/list-exports.js /tmp/sock
 *   [0] hello
 *   Which export to connect to? 0
 *   Connecting to hello ...
 *   /tmp/sock: hello: size = 2048 bytes
 *
 * With nbdkit's eval plugin (each export's content is its own name):
 *
 *   $ nbdkit -U /tmp/sock eval list_exports='echo NAMES; echo foo; echo foobar' \
 *       open='echo "$3"' get_size='echo "$2" | wc -c' \
 *       pread='echo "$2" | dd bs=1 skip=$4 count=$3 status=none'
 *   $ node dist/examples/list-exports.js /tmp/sock
 *   [0] foo
 *   [1] foobar
 *   Which export to connect to? 1
 *   Connecting to foobar ...
 *   /tmp/sock: foobar: size = 7 bytes
 *
 * Answer -1 to leave without connecting to any export.
 */
import { readSync } from "node:fs";
import { create, getError } from "nbd-ts";

const EXIT_SUCCESS = 0;
const EXIT_FAILURE = 1;

/** The opt_list callback's collection (C's struct export_list). */
interface ExportList {
  i: number;
  names: string[];
}

/** Called by optList once for each export: number it, print it, keep its name. */
function listOne(l: ExportList, name: string, description: string): number {
  console.log(`[${l.i}] ${name}`);
  if (description) console.log(`  (${description})`);
  l.names[l.i] = name;
  l.i++;
  return 0;
}

/** C's scanf("%d", &i): one line from stdin, its leading integer, or null (EOF, or not a number). */
function scanInt(): number | null {
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  for (;;) {
    let n: number;
    try {
      n = readSync(0, one);
    } catch (e) {
      // A non-blocking stdin (a terminal Node has touched) has nothing yet: wait a moment.
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") return null;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
      continue;
    }
    if (n === 0 || one[0] === 0x0a) break;
    bytes.push(one[0]!);
  }
  const m = /^\s*([+-]?\d+)/.exec(Buffer.from(bytes).toString());
  return m ? Number(m[1]) : null;
}

function main(argv: string[]): never {
  const list: ExportList = { i: 0, names: [] };

  if (argv.length !== 2) {
    console.error(`${argv[0]} socket`);
    process.exit(EXIT_FAILURE);
  }

  // Make a handle.
  const nbd = create();
  if (nbd === null) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  // Ask to stop in option mode during the handshake.
  nbd.setOptMode(true);

  // Connect over the server's Unix domain socket. A server that did not
  // leave us negotiating (an oldstyle one, say) cannot list its exports.
  if (nbd.connectUnix(argv[1]!) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  if (!nbd.aioIsNegotiating()) {
    console.error("Server does not support listing exports.");
    process.exit(EXIT_FAILURE);
  }

  // Print the exports as the server names them (user_data is a closure here).
  if (nbd.optList((name, description) => listOne(list, name, description)) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  // Let the user pick one.
  process.stdout.write("Which export to connect to? ");
  const i = scanInt();
  if (i === null) process.exit(EXIT_FAILURE);
  if (i === -1) {
    if (nbd.optAbort() === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
    nbd.close();
    process.exit(EXIT_SUCCESS);
  }
  if (i < 0 || i >= list.i) {
    console.error(`index ${i} out of range`);
    process.exit(EXIT_FAILURE);
  }
  const name = list.names[i]!;
  console.log(`Connecting to ${name} ...`);

  // Finish the handshake on the chosen export.
  if (nbd.setExportName(name) === -1 ||
      nbd.optGo() === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  if (!nbd.aioIsReady()) {
    console.error("server closed early");
    process.exit(EXIT_FAILURE);
  }

  // The size in bytes, printed.
  const size = nbd.getSize();
  if (size === -1n) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  console.log(`${argv[1]}: ${name}: size = ${size} bytes`);

  // Done with the server (the names need no freeing here).
  nbd.close();

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
