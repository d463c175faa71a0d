/**
 * nbd-ts: libnbd's C API, blocking and faithful, in TypeScript.
 *
 *   nbd_create()        → create()
 *   nbd_foo(h, ...)     → h.foo(...)
 *   nbd_get_error()     → getError()        nbd_get_errno() → getErrno()
 *   LIBNBD_CMD_FLAG_FUA → CMD_FLAG_FUA
 */
export { create, Handle } from "./handle.js";
export { getError, getErrno } from "./errors.js";
export * from "./constants.js";
