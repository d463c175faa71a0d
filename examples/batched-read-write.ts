/**
 * libnbd's examples/batched-read-write.c, line for line: send a large aio
 * read and, right behind it, a large aio write, before waiting for any
 * reply. A naive client that kept writing the second request without
 * reading the first one's reply, talking to a server that handles one
 * request at a time, would deadlock: each side's send buffer fills while
 * the other is not reading. This checks that the client keeps reading
 * replies to commands in flight while it still has requests to send.
 *
 *   node dist/examples/batched-read-write.js SOCKET
 *   node dist/examples/batched-read-write.js HOSTNAME PORT
 *   node dist/examples/batched-read-write.js nbd://HOSTNAME:PORT
 *
 * Try it with nbdkit serving requests one at a time:
 *
 *   nbdkit -U - --filter=noparallel memory 2M \
 *     --run 'node dist/examples/batched-read-write.js $unixsocket'
 */
import assert from "node:assert";
import { create, getError, type Handle } from "nbd-ts";

const EXIT_SUCCESS = 0;
const EXIT_FAILURE = 1;

// The one handle.
let nbd: Handle;

// The two buffers: inbuf and outbuf, as `in` is a keyword here. Shared
// memory lets the worker read into and write from them without a copy.
let inbuf: Uint8Array;
let outbuf: Uint8Array;
let packetsize: bigint;

// When the "alarm" fires (see main); Infinity: never.
let alarmAt = Infinity;

function try_deadlock(): number {
  const cookies: bigint[] = [0n, 0n];
  let done: bigint;
  let r: number;

  // Send both commands.
  cookies[0] = nbd.aioPread(inbuf, 0);
  if (cookies[0] === -1n) {
    console.error(getError());
    return error();
  }
  cookies[1] = nbd.aioPwrite(outbuf, packetsize);
  if (cookies[1] === -1n) {
    console.error(getError());
    return error();
  }

  // Wait until both have retired, or until the deadlock shows.
  while (nbd.aioInFlight() > 0) {
    if (nbd.aioIsDead() || nbd.aioIsClosed()) {
      console.error("connection is dead or closed");
      return error();
    }

    // C polls nbd_aio_get_fd() for the directions nbd_aio_get_direction()
    // names, then calls nbd_aio_notify_read or _write. In nbd-ts the socket
    // lives in the worker (those three calls fail with ENOTSUP), and
    // nbd.poll() is the same step. It waits no longer than the alarm allows.
    const timeout = alarmAt === Infinity ? -1 : Math.max(0, Math.ceil(alarmAt - Date.now()));
    if (nbd.poll(timeout) === -1) {
      console.error(`poll: ${getError()}`);
      return error();
    }
    if (Date.now() >= alarmAt)
      alarm_handler();

    // Retire whatever command has finished.
    while ((done = nbd.aioPeekCommandCompleted()) > 0n) {
      for (let i = 0; i < cookies.length; ++i) {
        if (cookies[i] === done) {
          r = nbd.aioCommandCompleted(cookies[i]!);
          if (r === -1) {
            console.error(getError());
            return error();
          }
          assert(r === 1);
          cookies[i] = 0n;
        }
      }
    }
  }
  assert(nbd.aioInFlight() === 0);

  console.log("finished OK");

  return 0;

  // C's "error:" label.
  function error(): number {
    console.error("failed");
    return -1;
  }
}

// C's SIGALRM handler. A signal cannot reach a thread blocked in poll here,
// so try_deadlock's loop checks the time itself.
function alarm_handler(): never {
  console.error("alarm fired; deadlock probably occurred");
  process.exit(EXIT_FAILURE);
}

function main(argv: string[]): never {
  if (argv.length < 2 || argv.length > 3) {
    console.error(`${argv[0]} uri | socket | hostname port`);
    process.exit(EXIT_FAILURE);
  }

  const h = create();
  if (h === null) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  nbd = h;

  // A blocking connect keeps this simple.
  if (argv.length === 2) {
    if (argv[1]!.includes("://")) {
      if (nbd.connectUri(argv[1]!) === -1) {
        console.error(getError());
        process.exit(EXIT_FAILURE);
      }
    }
    else if (nbd.connectUnix(argv[1]!) === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
  }
  else {
    if (nbd.connectTcp(argv[1]!, argv[2]!) === -1) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
  }

  if (nbd.isReadOnly() === 1) {
    console.error(`${argv[0]}: error: this NBD export is read-only`);
    process.exit(EXIT_FAILURE);
  }

  const exportsize = nbd.getSize();
  if (exportsize === -1n) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  packetsize = exportsize / 2n;
  if (packetsize > 2n * 1024n * 1024n)
    packetsize = 2n * 1024n * 1024n;

  inbuf = new Uint8Array(new SharedArrayBuffer(Number(packetsize)));
  outbuf = new Uint8Array(new SharedArrayBuffer(Number(packetsize)));

  // Do no harm: what we write back is what the second half already holds.
  if (nbd.pread(outbuf, packetsize, 0) === -1) {
    console.error(`sync read failed: ${getError()}`);
    process.exit(EXIT_FAILURE);
  }

  // Unless debugging, give up after 10 seconds, in case of a deadlock
  // (C: signal(SIGALRM, alarm_handler); alarm(10)).
  if (nbd.getDebug() < 1) {
    alarmAt = Date.now() + 10_000;
  }

  if (try_deadlock() === -1)
    process.exit(EXIT_FAILURE);

  if (nbd.shutdown(0) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  nbd.close();

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
