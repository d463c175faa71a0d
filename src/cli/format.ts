/**
 * Output formats shared by the tools, matched to libnbd's so that output can
 * be compared (and scripts switched) byte for byte: JSON strings as nbdinfo
 * escapes them, human sizes ("1M", "2075312K"), and printf's %.Nf and %g,
 * which round exact ties to even (JavaScript's toFixed rounds them up).
 */

/** A JSON string literal: `"` and `\` escaped, control characters as \u00XX, the rest as is. */
export function jsonString(s: string): string {
  return `"${s.replace(/["\\\x00-\x1f]/g, (c) => (c < " " ? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}` : `\\${c}`))}"`;
}

/** The size in the largest unit that divides it exactly ("1M", "1536K", "1000"), and whether a unit was used. */
export function humanSize(bytes: bigint): { text: string; human: boolean } {
  const units = ["", "K", "M", "G", "T", "P", "E"];
  let i = 0;
  if (bytes !== 0n) {
    while ((bytes & 1023n) === 0n && i < units.length - 1) {
      bytes >>= 10n;
      i++;
    }
  }
  return { text: `${bytes}${units[i]}`, human: i > 0 };
}

/** The exact decimal value of a finite double >= 0: digits and the power of ten of the first one. */
function exactDecimal(x: number): { digits: string; exp: number } {
  if (x === 0) return { digits: "0", exp: 0 };
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const bits = view.getBigUint64(0);
  const biased = Number((bits >> 52n) & 0x7ffn);
  let mant = bits & ((1n << 52n) - 1n);
  let e2 = biased - 1075;
  if (biased === 0) e2 = -1074;
  else mant |= 1n << 52n;
  // x = mant * 2^e2 = mant * 5^-e2 / 10^-e2 for negative e2.
  let int: bigint;
  let scale = 0;
  if (e2 >= 0) int = mant << BigInt(e2);
  else {
    int = mant * 5n ** BigInt(-e2);
    scale = -e2;
  }
  const digits = int.toString();
  return { digits, exp: digits.length - 1 - scale };
}

/** Rounds a digit string to `keep` digits, ties to even; a carry (9.96 → 10.0) gives one digit more. */
function roundDigits(digits: string, keep: number): { digits: string; carry: boolean } {
  if (digits.length <= keep) return { digits: digits.padEnd(keep, "0"), carry: false };
  const head = digits.slice(0, keep);
  const first = digits[keep]!;
  const last = keep > 0 ? Number(head[keep - 1]) : 0;
  const up = first > "5" || (first === "5" && (/[1-9]/.test(digits.slice(keep + 1)) || last % 2 === 1));
  if (!up) return { digits: head, carry: false };
  const bumped = (BigInt(head || "0") + 1n).toString().padStart(keep, "0");
  return { digits: bumped, carry: bumped.length > keep };
}

/** printf("%.Nf", x) for x >= 0. */
export function fixed(x: number, decimals: number): string {
  const { digits, exp } = exactDecimal(x);
  // Digits before the point: exp + 1 (none if exp < 0).
  const padded = exp < 0 ? "0".repeat(-exp - 1) + digits : digits;
  const intLen = Math.max(exp + 1, 0);
  const r = roundDigits(padded, intLen + decimals);
  const intDigits = intLen + (r.carry ? 1 : 0);
  const int = r.digits.slice(0, intDigits) || "0";
  return decimals > 0 ? `${int}.${r.digits.slice(intDigits)}` : int;
}

/** printf("%g", x) for x >= 0: 6 significant digits, trailing zeros dropped, exponent form outside [1e-4, 1e6). */
export function general(x: number): string {
  if (x === 0) return "0";
  const P = 6;
  const { digits, exp } = exactDecimal(x);
  const r = roundDigits(digits, P);
  const X = r.carry ? exp + 1 : exp;
  const sig = r.digits.slice(0, P);
  const trim = (s: string) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (X < -4 || X >= P) {
    const mant = trim(`${sig[0]}.${sig.slice(1)}`);
    return `${mant}e${X < 0 ? "-" : "+"}${String(Math.abs(X)).padStart(2, "0")}`;
  }
  return trim(fixed(x, P - 1 - X));
}

/** ANSI colours, as nbdinfo uses them when writing to a terminal. */
export const ansi = {
  bold: "\x1b[1m",
  grey: "\x1b[90m",
  green: "\x1b[32m",
  red: "\x1b[31m",
  brightWhite: "\x1b[97m",
  bgBlack: "\x1b[40m",
  bgLightGrey: "\x1b[47m",
  reset: "\x1b[0m",
} as const;
