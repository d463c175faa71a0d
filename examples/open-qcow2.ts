/**
 * libnbd's examples/open-qcow2.c, line for line: open a qcow2 file through
 * qemu-nbd (started by socket activation) and print its first sector.
 *
 *   node dist/examples/open-qcow2.js [file.qcow2]
 *
 * With no file, it makes one: a 1 MiB qcow2 whose first sector holds a
 * known message, written with qemu-io.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, getErrno, getError } from "nbd-ts";

/** The first sector of the demo disk: a line of text, then its offset pattern. */
const DEMO_SECTOR = (() => {
  const sector = new Uint8Array(512).map((_, i) => i & 0xff);
  sector.set(new TextEncoder().encode("Hello from the first sector of a qcow2 disk, read by nbd-ts.\n"));
  return sector;
})();

/** A 1 MiB qcow2 in a new temp dir with DEMO_SECTOR at offset 0. */
function makeDemoDisk(dir: string): string {
  const disk = join(dir, "disk.qcow2");
  const sector = join(dir, "sector.bin");
  writeFileSync(sector, DEMO_SECTOR);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", disk, "1M"]);
  execFileSync("qemu-io", ["-f", "qcow2", "-c", `write -q -s ${sector} 0 512`, disk]);
  return disk;
}

/** Like `hexdump -C`. */
function hexdump(buf: Uint8Array): string {
  const lines: string[] = [];
  for (let off = 0; off < buf.length; off += 16) {
    const row = buf.subarray(off, off + 16);
    const hex = [...row].map((b) => b.toString(16).padStart(2, "0"));
    const left = hex.slice(0, 8).join(" ").padEnd(23);
    const right = hex.slice(8).join(" ").padEnd(23);
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${left}  ${right}  |${ascii}|`);
  }
  lines.push(buf.length.toString(16).padStart(8, "0"));
  return lines.join("\n");
}

function main(filename: string): number {
  // Create the libnbd handle.
  const nbd = create();
  if (nbd === null) {
    console.error(getError());
    return 1;
  }

  // Connect to the qcow2 file using qemu-nbd as a subprocess.
  const args = ["qemu-nbd", "-f", "qcow2", filename];
  if (nbd.connectSystemdSocketActivation(args) === -1) {
    console.error(getError());
    nbd.close();
    return 1;
  }

  // Read the first sector and print it.
  const buf = new Uint8Array(512);
  if (nbd.pread(buf, 0, 0) === -1) {
    console.error(getError(), `(errno ${getErrno()})`);
    nbd.close();
    return 1;
  }
  console.log(hexdump(buf));

  // Close the libnbd handle: this also kills and reaps qemu-nbd.
  nbd.close();
  return 0;
}

const scratch = process.argv[2] ? undefined : mkdtempSync(join(tmpdir(), "open-qcow2-"));
try {
  process.exitCode = main(process.argv[2] ?? makeDemoDisk(scratch!));
} finally {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
}
