/* libnbd's side of bench/latency.ts: N sync 4 KiB preads at random aligned
 * offsets over a Unix socket; prints the median and the CPU time per call in
 * microseconds as "median_us cpu_us". Built at bench time with cc -lnbd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <libnbd.h>

static int cmp (const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static double now_us (clockid_t c) {
  struct timespec ts;
  clock_gettime (c, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main (int argc, char *argv[]) {
  if (argc != 4) { fprintf (stderr, "usage: %s SOCKET N SIZE\n", argv[0]); return 2; }
  int n = atoi (argv[2]);
  size_t size = atoi (argv[3]);
  struct nbd_handle *h = nbd_create ();
  if (!h || nbd_connect_unix (h, argv[1]) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
  int64_t blocks = nbd_get_size (h) / size;
  static char buf[1 << 20];
  double *t = malloc (n * sizeof *t);
  srand (1);
  for (int i = 0; i < 1000; i++) nbd_pread (h, buf, size, (rand () % blocks) * size, 0); /* warm-up */
  double cpu0 = now_us (CLOCK_PROCESS_CPUTIME_ID);
  for (int i = 0; i < n; i++) {
    uint64_t off = (uint64_t) (rand () % blocks) * size;
    double t0 = now_us (CLOCK_MONOTONIC);
    if (nbd_pread (h, buf, size, off, 0) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
    t[i] = now_us (CLOCK_MONOTONIC) - t0;
  }
  double cpu = (now_us (CLOCK_PROCESS_CPUTIME_ID) - cpu0) / n;
  qsort (t, n, sizeof *t, cmp);
  printf ("%.1f %.1f\n", t[n / 2], cpu);
  nbd_close (h);
  return 0;
}
