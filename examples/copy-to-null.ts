/**
 * Copy an export to nowhere, as fast as the server can send it: the idea of
 * libnbd's examples/copy-libev.c with the destination dropped (what
 * `nbdcopy SOURCE null:` does). Block status finds the extents; data
 * extents are read with aio reads, MAX_REQUESTS in flight, REQUEST_SIZE
 * each; extents that read as zeroes (holes) are skipped without a read.
 * It prints how many bytes it read and how many it skipped.
 *
 *   node dist/examples/copy-to-null.js nbd+unix:///?socket=SOCKET
 *
 * For example:
 *
 *   nbdkit -U - sparse-random 1G \
 *     --run 'node dist/examples/copy-to-null.js "$uri"'
 */
import { fileURLToPath } from "node:url";
import { CONTEXT_BASE_ALLOCATION, STATE_ZERO, create, getError, type Handle } from "nbd-ts";

const MAX_REQUESTS = 16;
const REQUEST_SIZE = 1024 * 1024;
/** How much one block status request asks about. */
const EXTENTS_SIZE = 128 * 1024 * 1024;

export interface Copied {
  size: number;
  /** Bytes read from data extents. */
  data: number;
  /** Bytes skipped: extents that read as zeroes. */
  zero: number;
}

interface Extent { offset: number; length: number; zero: boolean }

class Failed extends Error {}

/** Fails the copy with libnbd's last error. */
function check<T>(what: string, ret: T, failed: T): T {
  if (ret === failed) throw new Failed(`${what}: ${getError()}`);
  return ret;
}

/** Copies the export at `uri` to nowhere; throws with libnbd's error if a call fails. */
export function copyToNull(uri: string): Copied {
  const nbd = create();
  if (!nbd) throw new Failed(getError() ?? "nbd_create failed");
  try {
    check("add_meta_context", nbd.addMetaContext(CONTEXT_BASE_ALLOCATION), -1);
    check("connect_uri", nbd.connectUri(uri), -1);
    return copy(nbd);
  } finally {
    nbd.close();
  }
}

function copy(nbd: Handle): Copied {
  const size = Number(check("get_size", nbd.getSize(), -1n));
  const canExtents = check("can_meta_context", nbd.canMetaContext(CONTEXT_BASE_ALLOCATION), -1) === 1;
  const copied: Copied = { size, data: 0, zero: 0 };

  // Shared memory: the worker thread reads into these buffers, no copy on completion.
  const free = Array.from({ length: MAX_REQUESTS }, () => new Uint8Array(new SharedArrayBuffer(REQUEST_SIZE)));
  let failed: number | undefined;
  const readDone = (buf: Uint8Array<SharedArrayBuffer>) => (error: { value: number }): number => {
    if (error.value) failed ??= error.value;
    free.push(buf);
    return 1; // retire the command
  };

  // Extents known ahead of the reads, and where block status asks next.
  const extents: Extent[] = [];
  let extentsAt = 0;
  let extentsInFlight = false;
  const onExtents = (metacontext: string, offset: bigint, entries: Uint32Array): number => {
    if (metacontext !== CONTEXT_BASE_ALLOCATION) return 0;
    let at = Number(offset);
    for (let i = 0; i + 1 < entries.length; i += 2) {
      const length = Math.min(entries[i]!, size - at);
      if (length <= 0) break;
      extents.push({ offset: at, length, zero: (entries[i + 1]! & STATE_ZERO) !== 0 });
      at += length;
    }
    extentsAt = at;
    return 0;
  };
  const extentsDone = (error: { value: number }): number => {
    if (error.value) failed ??= error.value;
    extentsInFlight = false;
    return 1;
  };

  let offset = 0; // everything before it has been read or skipped (or is being read)
  while (offset < size || free.length < MAX_REQUESTS) {
    if (failed !== undefined) throw new Failed(`read failed: errno ${failed}`);
    // Ask for the next extents while the reads of the current ones go on.
    if (!extentsInFlight && extentsAt < size && extents.length < MAX_REQUESTS) {
      if (canExtents) {
        check("aio_block_status", nbd.aioBlockStatus(Math.min(EXTENTS_SIZE, size - extentsAt), extentsAt, onExtents, extentsDone), -1n);
        extentsInFlight = true;
      } else {
        extents.push({ offset: extentsAt, length: size - extentsAt, zero: false });
        extentsAt = size;
      }
    }
    // Start reads of data extents, skip zero ones.
    while (free.length && extents.length) {
      const extent = extents[0]!;
      if (extent.zero) {
        copied.zero += extent.length;
        offset = extent.offset + extent.length;
        extents.shift();
        continue;
      }
      const length = Math.min(REQUEST_SIZE, extent.length);
      const buf = free.pop()!;
      const view = length === REQUEST_SIZE ? buf : buf.subarray(0, length);
      check("aio_pread", nbd.aioPread(view, extent.offset, readDone(buf)), -1n);
      copied.data += length;
      offset = extent.offset + length;
      extent.offset += length;
      extent.length -= length;
      if (extent.length === 0) extents.shift();
    }
    if (offset < size || free.length < MAX_REQUESTS || extentsInFlight) check("poll", nbd.poll(-1), -1);
  }
  if (failed !== undefined) throw new Failed(`read failed: errno ${failed}`);
  return copied;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const uri = process.argv[2];
  if (process.argv.length !== 3 || !uri) {
    console.error("usage: copy-to-null URI");
    process.exit(1);
  }
  try {
    const { size, data, zero } = copyToNull(uri);
    console.log(`${size} bytes: ${data} read, ${zero} skipped as zeroes`);
  } catch (e) {
    console.error(`copy-to-null: ${e instanceof Failed ? e.message : String(e)}`);
    process.exit(1);
  }
}
