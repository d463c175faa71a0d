/**
 * nbd-ts copy --progress: a bar redrawn in place on a terminal (as nbdcopy
 * draws it), and plain lines ("copy: 42%") when the output is a file or a
 * pipe, one per percent. --progress=FD writes nbdcopy's machine format,
 * "N/100", to that descriptor.
 */
import { writeSync } from "node:fs";

export type Progress = (done: number, total: number) => void;

const SPINNER = ["▝", "▐", "▗", "▃", "▖", "▍", "▘", "▀"];
const WIDTH = 40;
/** A terminal is redrawn at most this often (and at 100%). */
const REDRAW_MS = 100;

export function progress(fd: number | undefined): Progress {
  const out = fd ?? process.stderr.fd;
  const tty = fd === undefined && process.stderr.isTTY === true;
  let last = -1;
  let lastDraw = 0;
  let spin = 0;
  let finished = false;
  const write = (s: string) => {
    try {
      writeSync(out, s);
    } catch { /* a closed progress fd must not stop the copy */ }
  };

  return (done, total) => {
    if (finished || total <= 0) return;
    const frac = Math.min(Math.max(done / total, 0), 1);
    const percent = Math.floor(frac * 100);
    if (frac === 1) finished = true;
    if (tty) {
      const now = Date.now();
      if (!finished && now - lastDraw < REDRAW_MS && percent === last) return;
      lastDraw = now;
      last = percent;
      const stars = finished ? WIDTH : Math.ceil(WIDTH * frac);
      const bar = "*".repeat(stars) + "-".repeat(WIDTH - stars);
      write(finished ? `█ 100% [${bar}]\n` : `${SPINNER[spin++ % SPINNER.length]} ${String(percent).padStart(3)}% [${bar}]\r`);
      return;
    }
    if (percent === last) return;
    last = percent;
    write(fd === undefined ? `copy: ${percent}%\n` : `${percent}/100\n`);
  };
}
