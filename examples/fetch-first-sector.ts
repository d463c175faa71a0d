/**
 * libnbd's examples/fetch-first-sector.c, line for line: connect to an NBD
 * server and print its first sector (typically a boot sector, a partition
 * table or a filesystem superblock) through `hexdump -C`.
 *
 *   node dist/examples/fetch-first-sector.js SOCKET
 *
 * Try it with nbdkit, whose floppy plugin serves a directory as an MBR disk,
 * so the first sector is a partition table:
 *
 *   nbdkit -U - floppy . --run 'node dist/examples/fetch-first-sector.js $unixsocket'
 */
import { spawnSync } from "node:child_process";
import { create, getError } from "nbd-ts";

const EXIT_SUCCESS = 0;
const EXIT_FAILURE = 1;

function main(argv: string[]): never {
  const buf = new Uint8Array(512);

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

  // A blocking read of sector 0.
  if (nbd.pread(buf, 0, 0) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  // Done with the server.
  nbd.close();

  // Show the sector: feed it to hexdump, as C's popen("hexdump -C", "w") does.
  const pp = spawnSync("hexdump", ["-C"], { input: buf, stdio: ["pipe", "inherit", "inherit"] });
  if (pp.error) {
    console.error(`popen: hexdump: ${pp.error.message}`);
    process.exit(EXIT_FAILURE);
  }

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
