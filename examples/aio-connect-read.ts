/**
 * libnbd's examples/aio-connect-read.c, line for line: how to use the AIO
 * (asynchronous) low level API to connect to a server and read the disk.
 *
 * Here are a few ways to try this example:
 *
 * nbdkit -U - linuxdisk . \
 *   --run 'node dist/examples/aio-connect-read.js $unixsocket'
 *
 * nbdkit -U - floppy . \
 *   --run 'node dist/examples/aio-connect-read.js $unixsocket'
 *
 * nbdkit -U - pattern size=1M \
 *   --run 'node dist/examples/aio-connect-read.js $unixsocket'
 */
import assert from "node:assert";
import { spawnSync } from "node:child_process";
import { basename } from "node:path";
import { getSystemErrorMap } from "node:util";
import { create, getError } from "nbd-ts";

const NR_SECTORS = 32;
const SECTOR_SIZE = 512;

interface Data {
  offset: bigint;
  sector: Uint8Array;
}

function hexdump(data: Data, error: { value: number }): number {
  if (error.value) {
    // perror(): Node's text for the errno (libuv's words, not glibc's).
    console.error(`failed to read: ${getSystemErrorMap().get(-error.value)?.[1] ?? `errno ${error.value}`}`);
    process.exit(1);
  }

  console.log(`sector at offset 0x${data.offset.toString(16)}:`);
  const pp = spawnSync("hexdump", ["-C"], { input: data.sector, stdio: ["pipe", "inherit", "inherit"] });
  if (pp.error) {
    console.error(`popen: hexdump: ${pp.error.message}`);
    process.exit(1);
  }
  console.log("");

  // Returning 1 from the callback automatically retires
  // the command.
  return 1;
}

const data: Data[] = Array.from({ length: NR_SECTORS }, () => ({ offset: 0n, sector: new Uint8Array(SECTOR_SIZE) }));

function main(argv: string[]): void {
  if (argv.length !== 2) {
    console.error(`${basename(argv[0]!)} socket`);
    process.exit(1);
  }

  // Create the libnbd handle.
  const nbd = create();
  if (nbd === null) {
    console.error(getError());
    process.exit(1);
  }

  // Connect to the NBD server over a Unix domain socket.
  // This only starts the connection.
  if (nbd.aioConnectUnix(argv[1]!) === -1) {
    console.error(getError());
    process.exit(1);
  }

  // Wait for the connection to complete.  The use of
  // nbd.poll here is only as an example: nbd-ts's socket lives
  // in its worker thread, so poll is the way to wait (aioGetFd
  // is ENOTSUP).
  while (!nbd.aioIsReady()) {
    if (nbd.poll(-1) === -1) {
      console.error(getError());
      process.exit(1);
    }
  }

  assert(nbd.getSize() >= BigInt(NR_SECTORS * SECTOR_SIZE));

  // Issue read commands for the first NR sectors.
  for (let i = 0; i < NR_SECTORS; ++i) {
    data[i]!.offset = BigInt(i * SECTOR_SIZE);

    // The callback (hexdump) is called when the command
    // completes.  The buffer must continue to exist while
    // the command is running.
    if (nbd.aioPread(data[i]!.sector, data[i]!.offset,
                     (error) => hexdump(data[i]!, error), 0) === -1n) {
      console.error(getError());
      process.exit(1);
    }
  }

  // Run the main loop until all the commands have
  // completed and retired.  Again the use of nbd.poll
  // here is only as an example.
  while (nbd.aioInFlight() > 0) {
    if (nbd.poll(-1) === -1) {
      console.error(getError());
      process.exit(1);
    }
  }

  // Close the libnbd handle.
  nbd.close();

  process.exit(0);
}

main(process.argv.slice(1));
