/**
 * libnbd's examples/reads-and-writes.c, line for line: blocking reads and
 * writes at random offsets of an NBD export. It overwrites whatever the
 * export held.
 *
 *   node dist/examples/reads-and-writes.js SOCKET
 *
 * Try it with nbdkit serving a 1 MiB RAM disk:
 *
 *   nbdkit -U - memory 1M --run 'node dist/examples/reads-and-writes.js $unixsocket'
 */
import assert from "node:assert";
import { create, getError } from "nbd-ts";

const EXIT_SUCCESS = 0;
const EXIT_FAILURE = 1;

/** C's rand(): a pseudo-random integer in [0, RAND_MAX] (glibc's RAND_MAX). */
const RAND_MAX = 2147483647;
const rand = (): number => Math.floor(Math.random() * (RAND_MAX + 1));

function main(argv: string[]): never {
  const buf = new Uint8Array(512);
  let offset: bigint;

  // (Math.random needs no srand(time(NULL)).)

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

  // Connect over the server's Unix domain socket.
  if (nbd.connectUnix(argv[1]!) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  // The disk must hold more than one buffer. (C asserts >=, but an export of
  // exactly one buffer leaves no room for a random offset: rand() % 0.)
  const exportsize = nbd.getSize();
  if (exportsize === -1n) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  assert(exportsize > BigInt(buf.length));

  // Writes must be allowed.
  if (nbd.isReadOnly() === 1) {
    console.error(`${argv[0]}: error: this NBD export is read-only`);
    process.exit(EXIT_FAILURE);
  }

  for (let i = 0; i < buf.length; ++i)
    buf[i] = rand(); // the low byte, as C's char keeps

  // 1000 writes.
  for (let i = 0; i < 1000; ++i) {
    offset = BigInt(rand()) % (exportsize - BigInt(buf.length));

    if (nbd.pwrite(buf, offset, 0) === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
  }

  // 1000 pairs: a read somewhere, then a write somewhere else.
  for (let i = 0; i < 1000; ++i) {
    offset = BigInt(rand()) % (exportsize - BigInt(buf.length));
    if (nbd.pread(buf, offset, 0) === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }

    offset = BigInt(rand()) % (exportsize - BigInt(buf.length));
    if (nbd.pwrite(buf, offset, 0) === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
  }

  // Tell the server we are leaving, politely.
  if (nbd.shutdown(0) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  nbd.close();

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
