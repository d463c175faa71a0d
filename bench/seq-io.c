/* libnbd's side of the seq and write figures: sync nbd_pread or nbd_pwrite
 * of REQ bytes, sequentially over the whole export; prints MB/s (10^6 bytes
 * per second) and the CPU time per call in microseconds, as "mbs cpu_us".
 * Built at bench time with cc -lnbd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <libnbd.h>

static double now_us (clockid_t c) {
  struct timespec ts;
  clock_gettime (c, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main (int argc, char *argv[]) {
  if (argc != 4 || (strcmp (argv[2], "read") && strcmp (argv[2], "write"))) {
    fprintf (stderr, "usage: %s SOCKET read|write REQ\n", argv[0]);
    return 2;
  }
  int write = !strcmp (argv[2], "write");
  size_t req = atol (argv[3]);
  struct nbd_handle *h = nbd_create ();
  if (!h || nbd_connect_unix (h, argv[1]) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
  int64_t size = nbd_get_size (h);
  char *buf = malloc (req);
  for (size_t i = 0; i < req; i++) buf[i] = i * 7 + 1;
  double cpu0 = now_us (CLOCK_PROCESS_CPUTIME_ID);
  double t0 = now_us (CLOCK_MONOTONIC);
  int64_t calls = 0;
  for (uint64_t offset = 0; offset < (uint64_t) size; offset += req, calls++) {
    int r = write ? nbd_pwrite (h, buf, req, offset, 0) : nbd_pread (h, buf, req, offset, 0);
    if (r == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
  }
  double us = now_us (CLOCK_MONOTONIC) - t0;
  double cpu = (now_us (CLOCK_PROCESS_CPUTIME_ID) - cpu0) / calls;
  printf ("%.1f %.1f\n", size / us, cpu);
  nbd_close (h);
  return 0;
}
