/* libnbd's side of the connect figure: N times, nbd_create,
 * nbd_connect_systemd_socket_activation of "nbdkit memory 1G", nbd_close
 * (which stops the server); prints the median time of one in milliseconds.
 * Built at bench time with cc -lnbd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <libnbd.h>

static int cmp (const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static double now_ms (void) {
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main (int argc, char *argv[]) {
  if (argc != 2) { fprintf (stderr, "usage: %s N\n", argv[0]); return 2; }
  int n = atoi (argv[1]);
  char *args[] = { "nbdkit", "memory", "1G", NULL };
  double *t = malloc (n * sizeof *t);
  for (int i = 0; i < n; i++) {
    double t0 = now_ms ();
    struct nbd_handle *h = nbd_create ();
    if (!h || nbd_connect_systemd_socket_activation (h, args) == -1) {
      fprintf (stderr, "%s\n", nbd_get_error ());
      return 1;
    }
    nbd_close (h);
    t[i] = now_ms () - t0;
  }
  qsort (t, n, sizeof *t, cmp);
  printf ("%.2f\n", t[n / 2]);
  return 0;
}
