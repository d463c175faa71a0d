/* libnbd's side of the lat and rss figures: N sync preads of SIZE bytes at
 * random aligned offsets over a Unix socket, after 1000 of warm-up. Prints
 * the median and the CPU time per call in microseconds ("median_us cpu_us");
 * with a fourth argument "rss", only the growth of the resident set over the
 * N calls, in KiB. Built at bench time with cc -lnbd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
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

/* Resident set in KiB, from /proc/self/statm. */
static long rss_kib (void) {
  long pages = 0, resident = 0;
  FILE *f = fopen ("/proc/self/statm", "r");
  if (!f || fscanf (f, "%ld %ld", &pages, &resident) != 2) { perror ("statm"); exit (1); }
  fclose (f);
  return resident * (sysconf (_SC_PAGESIZE) / 1024);
}

int main (int argc, char *argv[]) {
  if (argc != 4 && !(argc == 5 && !strcmp (argv[4], "rss"))) {
    fprintf (stderr, "usage: %s SOCKET N SIZE [rss]\n", argv[0]);
    return 2;
  }
  int rss = argc == 5;
  int n = atoi (argv[2]);
  size_t size = atoi (argv[3]);
  struct nbd_handle *h = nbd_create ();
  if (!h || nbd_connect_unix (h, argv[1]) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
  int64_t blocks = nbd_get_size (h) / size;
  static char buf[1 << 20];
  double *t = rss ? NULL : malloc (n * sizeof *t);
  if (t) memset (t, 0, n * sizeof *t); /* resident before timing starts */
  srand (1);
  for (int i = 0; i < 1000; i++) nbd_pread (h, buf, size, (rand () % blocks) * size, 0); /* warm-up */
  long rss0 = rss_kib ();
  double cpu0 = now_us (CLOCK_PROCESS_CPUTIME_ID);
  for (int i = 0; i < n; i++) {
    uint64_t off = (uint64_t) (rand () % blocks) * size;
    double t0 = rss ? 0 : now_us (CLOCK_MONOTONIC);
    if (nbd_pread (h, buf, size, off, 0) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
    if (!rss) t[i] = now_us (CLOCK_MONOTONIC) - t0;
  }
  if (rss) {
    printf ("%ld\n", rss_kib () - rss0);
  } else {
    double cpu = (now_us (CLOCK_PROCESS_CPUTIME_ID) - cpu0) / n;
    qsort (t, n, sizeof *t, cmp);
    printf ("%.1f %.1f\n", t[n / 2], cpu);
  }
  nbd_close (h);
  return 0;
}
