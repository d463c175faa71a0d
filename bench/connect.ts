/**
 * nbd-ts's side of the connect figure, as a program of its own, as
 * connect.c is libnbd's: N times create, connectSystemdSocketActivation of
 * "nbdkit memory 1G", close, after as many untimed (V8 compiles the code
 * on the way); prints the median time of one in milliseconds.
 * A process of its own because starting a server costs a fork, and a fork
 * costs more the more memory the forking process has mapped (Node's spawn
 * is a full fork: about 0.6 ms at 1 MB, 1.2 ms at 16 MB, 2.7 ms at 64 MB).
 *
 *   node dist/bench/connect.js N
 */
import { fileURLToPath } from "node:url";
import { create, getError } from "nbd-ts";

/** The median ms of `n` create + connect + close cycles. */
export function connectClose(n: number): number {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    const h = create();
    if (!h || h.connectSystemdSocketActivation(["nbdkit", "memory", "1G"]) === -1) {
      throw new Error(`connect_systemd_socket_activation: ${getError()}`);
    }
    h.close();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return times.sort((a, b) => a - b)[n >> 1]!;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const n = Number(process.argv[2]);
  if (!(n > 0)) {
    console.error("usage: connect N");
    process.exit(2);
  }
  connectClose(n);
  console.log(connectClose(n).toFixed(2));
}
