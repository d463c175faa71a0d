/**
 * libnbd's examples/server-flags.c, line for line: connect to an NBD server
 * and print what it says about its export: the canonical name and
 * description when it gives them, then each flag.
 *
 *   node dist/examples/server-flags.js SOCKET
 *
 * Try it with nbdkit serving a 1 MiB RAM disk:
 *
 *   nbdkit -U - memory 1M --run 'node dist/examples/server-flags.js $unixsocket'
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

  // Ask the server for everything it can tell about the export. (The C
  // example guards this and the two calls below with LIBNBD_HAVE_* macros,
  // for libnbd before 1.4; nbd-ts always has them.)
  if (nbd.setFullInfo(true) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  // Connect over the server's Unix domain socket.
  if (nbd.connectUnix(argv[1]!) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  // The extra details, printed only if the server sent them.
  let str = nbd.getCanonicalExportName();
  if (str !== null)
    console.log(`canonical_name = ${str}`);
  str = nbd.getExportDescription();
  if (str !== null)
    console.log(`description = ${str}`);

  // Each flag, printed under its C name (C's PRINT_FLAG macro, which
  // stringifies the function name).
  const PRINT_FLAG = (flagFn: string, flag: number): void => {
    if (flag === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
    console.log(`${flagFn} = ${flag ? "true" : "false"}`);
  };

  PRINT_FLAG("nbd_can_cache", nbd.canCache());
  PRINT_FLAG("nbd_can_df", nbd.canDf());
  PRINT_FLAG("nbd_can_flush", nbd.canFlush());
  PRINT_FLAG("nbd_can_fua", nbd.canFua());
  PRINT_FLAG("nbd_can_multi_conn", nbd.canMultiConn());
  PRINT_FLAG("nbd_can_trim", nbd.canTrim());
  PRINT_FLAG("nbd_can_zero", nbd.canZero());
  PRINT_FLAG("nbd_can_fast_zero", nbd.canFastZero());
  PRINT_FLAG("nbd_is_read_only", nbd.isReadOnly());
  PRINT_FLAG("nbd_is_rotational", nbd.isRotational());

  // Done with the server.
  nbd.close();

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
