/**
 * libnbd's examples/strict-structured-reads.c, line for line: 1000 reads at
 * random offsets, in flight together, each checking that the server's
 * structured reply obeys the NBD spec. Chunks may come in any order and
 * interleave with other replies, but a read may succeed only when its chunks
 * cover the whole range, none of them empty and none overlapping another.
 *
 *   node dist/examples/strict-structured-reads.js SOCKET|URI
 *
 * With qemu-nbd, which sends holes as hole chunks:
 *
 *   sock=$(mktemp -u)
 *   qemu-nbd -f $format -k $sock -r image
 *   node dist/examples/strict-structured-reads.js $sock
 *
 * With nbdkit (less telling: nbdkit sends no hole chunks):
 *
 *   nbdkit -U - sparse-random 1G --run 'node dist/examples/strict-structured-reads.js "$unixsocket"'
 */
import assert from "node:assert";
import { CMD_FLAG_DF, READ_DATA, READ_ERROR, READ_HOLE, create, getError } from "nbd-ts";

const EXIT_SUCCESS = 0;
const EXIT_FAILURE = 1;
const EPROTO = 71; // Linux <errno.h>

/** C's rand(): a pseudo-random integer in [0, RAND_MAX] (glibc's RAND_MAX). */
const RAND_MAX = 2147483647;
const rand = (): number => Math.floor(Math.random() * (RAND_MAX + 1));

/** A list of the ranges not yet seen (a linked list, as in C). */
interface Range {
  first: bigint;
  last: bigint;
  next: Range | null;
}

/** One read's bookkeeping. */
interface Data {
  offset: bigint;
  count: number;
  flags: number;
  chunks: number;
  remaining: Range | null;
}

const MAX_BUF = 2 * 1024 * 1024;
// In shared memory, so that every aio read fills it in place, as C's static buffer.
const buf = new Uint8Array(new SharedArrayBuffer(MAX_BUF));

// Running totals.
let total_data_chunks = 0;
let total_data_bytes = 0n;
let total_hole_chunks = 0;
let total_hole_bytes = 0n;
let total_chunks = 0;
let total_df_reads = 0;
let total_reads = 0;
let total_bytes = 0n;
let total_success = 0;

function read_chunk(data: Data, subbuf: Uint8Array, offset: bigint, status: number, error: { value: number }): number {
  let count = BigInt(subbuf.length);
  let r: Range | null;
  // C walks a pointer to the link that points at r; here, the Range before r (null: the list head).
  let prev: Range | null;

  // The library makes sure of these.
  assert(offset >= data.offset);
  assert(offset + count <= data.offset + BigInt(data.count));

  switch (status) {
    case READ_DATA:
      total_data_chunks++;
      total_data_bytes += count;
      break;
    case READ_HOLE:
      total_hole_chunks++;
      total_hole_bytes += count;
      break;
    case READ_ERROR:
      assert(count === 0n);
      count = 1n; // so that no later chunk may claim this offset
      break;
    default:
      error.value = EPROTO;
      return -1;
  }
  data.chunks++;
  if (count === 0n) {
    console.error("buggy server: chunk must have non-zero size");
    error.value = EPROTO;
    return -1;
  }

  // The chunk must lie in a range not seen yet, or the server is wrong.
  // (C stops at the first range that starts at or before offset: after a
  // split, that can be the range below the right one, and a compliant server
  // that sends a read's chunks out of order is then called buggy.)
  for (prev = null, r = data.remaining; r; prev = r, r = r.next) {
    if (offset >= r.first && offset < r.last)
      break;
  }
  if (r === null || offset + count > r.last) {
    // Two errors at one offset go unnoticed, but the read fails anyway.
    if (status === READ_ERROR)
      return 0;
    console.error("buggy server: chunk with overlapping range");
    error.value = EPROTO;
    return -1;
  }

  // Shrink r, or split it in two, around the bytes this chunk covered.
  if (offset === r.first) {
    if (offset + count === r.last) {
      if (prev) prev.next = r.next;
      else data.remaining = r.next;
    }
    else
      r.first += count;
  }
  else if (offset + count === r.last) {
    r.last -= count;
  }
  else {
    const n: Range = { first: offset + count, last: r.last, next: r.next };
    r.next = n;
    r.last = offset; // (C has offset - r->first: a length where an end belongs)
  }

  return 0;
}

function read_verify(data: Data, error: { value: number }): number {
  total_reads++;
  total_chunks += data.chunks;
  // try/finally stands for C's "goto cleanup", which frees what remains of the list.
  try {
    if (error.value)
      return -1;
    assert(data.chunks > 0);
    if (data.flags & CMD_FLAG_DF) {
      total_df_reads++;
      if (data.chunks > 1) {
        console.error("buggy server: too many chunks for DF flag");
        error.value = EPROTO;
        return -1;
      }
    }
    if (data.remaining && !error.value) {
      console.error("buggy server: not enough chunks on success");
      error.value = EPROTO;
      return -1;
    }
    total_bytes += BigInt(data.count);
    total_success++;
    return 0;
  } finally {
    data.remaining = null;
  }
}

function main(argv: string[]): never {
  let maxsize = MAX_BUF;

  // (Math.random needs no srand(time(NULL)).)

  if (argv.length !== 2) {
    console.error(`${argv[0]} socket|uri`);
    process.exit(EXIT_FAILURE);
  }

  const nbd = create();
  if (nbd === null) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
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

  const exportsize = nbd.getSize();
  if (exportsize === -1n) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }
  if (exportsize < 512n) {
    console.error("image is too small for useful testing");
    process.exit(EXIT_FAILURE);
  }
  if (exportsize <= BigInt(maxsize))
    maxsize = Number(exportsize) - 1;

  // Start 1000 reads at once. They all land in the same buffer: wrong for
  // real work, harmless here, since only the server's replies are checked.
  // Each read is maxsize bytes (C passes sizeof buf, which overruns an image
  // smaller than MAX_BUF).
  for (let i = 0; i < 1000; ++i) {
    let flags = 0;
    const offset = BigInt(rand()) % (exportsize - BigInt(maxsize));
    if (rand() & 1)
      flags = CMD_FLAG_DF;
    const r: Range = { first: offset, last: offset + BigInt(maxsize), next: null };
    const d: Data = { offset, count: maxsize, flags, chunks: 0, remaining: r };
    if (nbd.aioPreadStructured(buf.subarray(0, maxsize), offset,
                               (subbuf, off, status, error) => read_chunk(d, subbuf, off, status, error),
                               (error) => read_verify(d, error),
                               flags) === -1n) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
  }

  while (nbd.aioInFlight() > 0) {
    const cookie = nbd.aioPeekCommandCompleted();

    if (cookie === -1n) {
      console.error(getError());
      process.exit(EXIT_FAILURE);
    }
    if (cookie === 0n) {
      if (nbd.poll(-1) === -1) {
        console.error(getError());
        process.exit(EXIT_FAILURE);
      }
    }
    else
      nbd.aioCommandCompleted(cookie);
  }

  if (nbd.shutdown(0) === -1) {
    console.error(getError());
    process.exit(EXIT_FAILURE);
  }

  const pad = (n: number | bigint): string => String(n).padStart(10);
  console.log("traffic:");
  console.log(` bytes sent:      ${pad(nbd.statsBytesSent())}`);
  console.log(` bytes received:  ${pad(nbd.statsBytesReceived())}`);
  console.log(` chunks sent:     ${pad(nbd.statsChunksSent())}`);
  console.log(` chunks received: ${pad(nbd.statsChunksReceived())}`);
  console.log("totals:");
  console.log(` data chunks: ${pad(total_data_chunks)}`);
  console.log(` data bytes:  ${pad(total_data_bytes)}`);
  console.log(` hole chunks: ${pad(total_hole_chunks)}`);
  console.log(` hole bytes:  ${pad(total_hole_bytes)}`);
  console.log(` all chunks:  ${pad(total_chunks)}`);
  console.log(` df reads:    ${pad(total_df_reads)}`);
  console.log(` reads:       ${pad(total_reads)}`);
  console.log(` bytes read:  ${pad(total_bytes)}`);
  console.log(` compliant:   ${pad(total_success)}`);

  nbd.close();

  process.exit(EXIT_SUCCESS);
}

main(process.argv.slice(1));
