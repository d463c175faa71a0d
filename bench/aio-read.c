/* libnbd's side of the aio figure: read the whole export with nbd_aio_pread,
 * REQ bytes per request, DEPTH requests in flight, driven by nbd_poll; prints
 * MB/s (10^6 bytes per second). Built at bench time with cc -lnbd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <libnbd.h>

static int in_flight;

static int done (void *user_data, int *error) {
  if (*error) { fprintf (stderr, "read failed: %d\n", *error); exit (1); }
  in_flight--;
  return 1; /* retire */
}

int main (int argc, char *argv[]) {
  if (argc != 4) { fprintf (stderr, "usage: %s SOCKET REQ DEPTH\n", argv[0]); return 2; }
  size_t req = atol (argv[2]);
  int depth = atoi (argv[3]);
  struct nbd_handle *h = nbd_create ();
  if (!h || nbd_connect_unix (h, argv[1]) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
  int64_t size = nbd_get_size (h);
  char *bufs = malloc (req * depth);
  struct timespec t0, t1;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  uint64_t offset = 0;
  int slot = 0;
  while (offset < (uint64_t) size || in_flight > 0) {
    while (in_flight < depth && offset < (uint64_t) size) {
      nbd_completion_callback cb = { .callback = done };
      if (nbd_aio_pread (h, bufs + (slot++ % depth) * req, req, offset, cb, 0) == -1) {
        fprintf (stderr, "%s\n", nbd_get_error ()); return 1;
      }
      in_flight++;
      offset += req;
    }
    if (nbd_poll (h, -1) == -1) { fprintf (stderr, "%s\n", nbd_get_error ()); return 1; }
  }
  clock_gettime (CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf ("%.1f\n", size / s / 1e6);
  nbd_close (h);
  return 0;
}
