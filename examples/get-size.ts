/**
 * libnbd's examples/get-size.c, line for line: connect to an NBD server and
 * print the size of its disk.
 *
 *   node dist/examples/get-size.js SOCKET
 *
 * Try it with nbdkit serving a 1 MiB RAM disk:
 *
 *   nbdkit -U - memory 1M --run 'node dist/examples/get-size.js $unixsocket'
 */
import { create, getError } from "nbd-ts";

const EXIT_SUCCESS = 0;
const EXIT_FAILURE = 1;

function main(argv: string[]): never {
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

  // The size in bytes (a bigint, as C's int64_t), printed.
  const size = nbd.getSize();
  if (size === -1n) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  console.log(`${argv[1]}: size = ${size} bytes`);

  // Done with the server.
  nbd.close();

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
