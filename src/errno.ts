/**
 * Linux errno numbers and glibc's strerror() texts, so that messages read
 * exactly as libnbd prints them ("...: Transport endpoint is not connected").
 * Node's own texts come from libuv and differ, hence this table.
 */

const table = {
  EPERM: [1, "Operation not permitted"],
  ENOENT: [2, "No such file or directory"],
  ESRCH: [3, "No such process"],
  EINTR: [4, "Interrupted system call"],
  EIO: [5, "Input/output error"],
  ENXIO: [6, "No such device or address"],
  E2BIG: [7, "Argument list too long"],
  EBADF: [9, "Bad file descriptor"],
  EAGAIN: [11, "Resource temporarily unavailable"],
  ENOMEM: [12, "Cannot allocate memory"],
  EACCES: [13, "Permission denied"],
  EFAULT: [14, "Bad address"],
  EBUSY: [16, "Device or resource busy"],
  EEXIST: [17, "File exists"],
  ENOTDIR: [20, "Not a directory"],
  EISDIR: [21, "Is a directory"],
  EINVAL: [22, "Invalid argument"],
  EMFILE: [24, "Too many open files"],
  EFBIG: [27, "File too large"],
  ENOSPC: [28, "No space left on device"],
  EROFS: [30, "Read-only file system"],
  EPIPE: [32, "Broken pipe"],
  ERANGE: [34, "Numerical result out of range"],
  ENAMETOOLONG: [36, "File name too long"],
  ENOSYS: [38, "Function not implemented"],
  EPROTO: [71, "Protocol error"],
  EOVERFLOW: [75, "Value too large for defined data type"],
  ENOTSOCK: [88, "Socket operation on non-socket"],
  ENOTSUP: [95, "Operation not supported"],
  EADDRINUSE: [98, "Address already in use"],
  EADDRNOTAVAIL: [99, "Cannot assign requested address"],
  ENETUNREACH: [101, "Network is unreachable"],
  ECONNABORTED: [103, "Software caused connection abort"],
  ECONNRESET: [104, "Connection reset by peer"],
  ENOTCONN: [107, "Transport endpoint is not connected"],
  ESHUTDOWN: [108, "Cannot send after transport endpoint shutdown"],
  ETIMEDOUT: [110, "Connection timed out"],
  ECONNREFUSED: [111, "Connection refused"],
  EHOSTUNREACH: [113, "No route to host"],
  EALREADY: [114, "Operation already in progress"],
  EINPROGRESS: [115, "Operation now in progress"],
  EDQUOT: [122, "Disk quota exceeded"],
} as const;

type Name = keyof typeof table;

/** errno values by name: `errno.EINVAL === 22`. */
export const errno = Object.fromEntries(
  Object.entries(table).map(([name, [n]]) => [name, n]),
) as { readonly [K in Name]: (typeof table)[K][0] };

const texts = new Map<number, string>(Object.values(table));

/** glibc's text for an errno value. */
export function strerror(n: number): string {
  return texts.get(n) ?? `Unknown error ${n}`;
}

/** The errno of a Node system error (`err.code === "ECONNREFUSED"`), or `fallback`. */
export function errnoOf(err: unknown, fallback = 0): number {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string" && code in table) return table[code as Name][0];
  return fallback;
}

/** The symbolic name of an errno value ("EINVAL"), if it is one we know. */
export function errnoName(n: number): string | undefined {
  for (const [name, [value]] of Object.entries(table)) if (value === n) return name;
  return undefined;
}
