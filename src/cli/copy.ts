/**
 * nbd-ts copy: nbdcopy(1) on nbd-ts's Promise API. Copies between NBD
 * exports (URIs, or servers run by socket activation), local files, stdout
 * and null:, sparse-aware (block status on the source, zero detection in the
 * data) with many requests in flight.
 *
 *   nbd-ts copy [options] SOURCE DESTINATION
 */
import { Failure, UsageError, endpoints, parse, size, unsigned, type OptionSpec } from "./args.js";
import { FileEnd, openDestination, openSource, type End } from "./copy-ends.js";
import { copy, type Settings } from "./copy-engine.js";
import { progress } from "./progress.js";

export const USAGE = `
Copy to and from an NBD server:

    nbd-ts copy [--allocated] [-C N|--connections=N]
                [--destination-is-zero|--target-is-zero] [--flush]
                [--no-extents] [-p|--progress|--progress=FD]
                [--queue-size=N] [--request-size=N] [-R N|--requests=N]
                [-S N|--sparse=N] [--synchronous] [-v|--verbose]
                SOURCE DESTINATION

    SOURCE      := FILE | NBD-URI | [ CMD ARGS ... ]
    DESTINATION := FILE | - | NBD-URI | [ CMD ARGS ... ] | null:

A [ CMD ARGS ... ] server is started by systemd socket activation and
stopped at the end. -p draws a progress bar on a terminal and prints
"copy: N%" lines otherwise (on stderr); --progress=FD writes "N/100" lines
to that file descriptor.

Other options:

    nbd-ts copy --help
    nbd-ts copy -V|--version

Examples:

    nbd-ts copy nbd://example.com local.img
    nbd-ts copy local.img nbd://example.com
    nbd-ts copy -p -- [ qemu-nbd -f qcow2 disk.qcow2 ] disk.raw
    nbd-ts copy nbd://example.com null:

Exit status: 0 on success; 1 on failure; 2 for a mistake on the command line.
`;

const OPTIONS: OptionSpec[] = [
  { name: "help", short: "h" },
  { name: "version", short: "V" },
  { name: "allocated" },
  { name: "connections", short: "C", arg: "required" },
  { name: "destination-is-zero", aliases: ["target-is-zero"] },
  { name: "flush" },
  { name: "no-extents" },
  { name: "progress", short: "p", arg: "optional" },
  { name: "queue-size", arg: "required" },
  { name: "request-size", arg: "required" },
  { name: "requests", short: "R", arg: "required" },
  { name: "sparse", short: "S", arg: "required" },
  { name: "synchronous" },
  { name: "verbose", short: "v" },
];

const MIN_REQUEST_SIZE = 4096;
const MAX_REQUEST_SIZE = 32 * 1024 * 1024;
const isPowerOf2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

export async function main(argv: string[], prog: string): Promise<number> {
  const p = parse(argv, OPTIONS);
  if (p.options.some((o) => o.name === "help")) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (p.options.some((o) => o.name === "version")) {
    const { VERSION } = await import("../version.js");
    process.stdout.write(`${prog} ${VERSION}\n`);
    return 0;
  }
  const s: Settings = {
    requestSize: 1 << 18, requests: 64, queueSize: 16 << 20, sparseSize: 4096,
    allocated: false, extents: true, connections: 4,
  };
  let destinationIsZero = false;
  let flush = false;
  let synchronous = false;
  let progressFd: number | undefined;
  let showProgress = false;
  let verbose = false;
  for (const { name, value } of p.options) {
    switch (name) {
      case "allocated": s.allocated = true; break;
      case "connections":
        s.connections = unsigned(name, value);
        if (s.connections === 0) throw new UsageError(`--connections: could not parse: ${value}`);
        break;
      case "destination-is-zero": destinationIsZero = true; break;
      case "flush": flush = true; break;
      case "no-extents": s.extents = false; break;
      case "progress":
        showProgress = true;
        if (value !== undefined) progressFd = unsigned(name, value);
        break;
      case "queue-size": s.queueSize = size(name, value); break;
      case "request-size":
        s.requestSize = size(name, value);
        if (s.requestSize < MIN_REQUEST_SIZE || s.requestSize > MAX_REQUEST_SIZE || !isPowerOf2(s.requestSize)) {
          throw new UsageError(`--request-size: must be a power of 2 within ${MIN_REQUEST_SIZE}-${MAX_REQUEST_SIZE}`);
        }
        break;
      case "requests":
        s.requests = unsigned(name, value);
        if (s.requests === 0) throw new UsageError(`--requests: could not parse: ${value}`);
        break;
      case "sparse":
        s.sparseSize = size(name, value);
        if (s.sparseSize !== 0 && (s.sparseSize < 512 || !isPowerOf2(s.sparseSize))) {
          throw new UsageError("--sparse: must be a power of 2 and >= 512");
        }
        break;
      case "synchronous": synchronous = true; break;
      case "verbose": verbose = true; break;
    }
  }
  const eps = endpoints(p);
  if (eps.length !== 2) throw new UsageError(eps.length < 2 ? "missing SOURCE or DESTINATION" : "too many operands: give one SOURCE and one DESTINATION");
  if (verbose) process.env.LIBNBD_DEBUG = "1";

  const ends: End[] = [];
  try {
    const src = await openSource(eps[0]!, s.extents);
    ends.push(src);
    const dst = await openDestination(eps[1]!);
    ends.push(dst);
    if (dst.readOnly) throw new Failure(`${dst.name}: the destination is read-only, cannot write to it`);
    if (src instanceof FileEnd && dst instanceof FileEnd && src.identity === dst.identity) {
      throw new Failure(`${dst.name}: the source and the destination are the same file`);
    }
    // Subprocess servers and servers without multi-conn get one connection.
    if (synchronous || !src.multiConn || !dst.multiConn) s.connections = 1;
    if (synchronous) s.requests = 1;
    s.requestSize = Math.max(s.requestSize, src.preferred, dst.preferred);
    s.queueSize = Math.max(s.queueSize, s.requestSize);
    if (s.sparseSize > 0 && s.sparseSize < dst.preferred) s.sparseSize = dst.preferred;

    if (dst instanceof FileEnd) await dst.startEmpty(src.size);
    else if (destinationIsZero) dst.zeroed = true;
    if (dst.size >= 0 && src.size > dst.size) throw new Failure("error: destination size is smaller than source size");
    await src.connect(s.connections);
    await dst.connect(s.connections);
    if (verbose) {
      for (const [label, e] of [["src", src], ["dst", dst]] as const) {
        process.stderr.write(`${prog}: ${label}: ${e.kind} "${e.name}"\n${prog}: ${label}: size=${e.size}, preferred block size=${e.preferred}\n`);
      }
      process.stderr.write(`${prog}: connections=${s.connections} requests=${s.requests} request-size=${s.requestSize} synchronous=${synchronous || dst.sequential}\n`);
    }
    if (showProgress) s.progress = progress(progressFd);
    s.progress?.(0, 1);
    await copy(src, dst, s);
    s.progress?.(1, 1);
    if (flush) await dst.flush();
    // Close in order so that a failure to close (a lost write) is reported.
    while (ends.length) await ends.shift()!.close();
  } finally {
    for (const e of ends) await e.close().catch(() => {});
  }
  return 0;
}
