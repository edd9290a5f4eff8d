import { GrammarError } from "./constraint.js";
import {
  alt,
  byteRange,
  type CharSet,
  charClass,
  EMPTY,
  intersect,
  lit,
  MAX_CP,
  type Node,
  opt,
  plus,
  rep,
  seq,
  star,
  subtract,
} from "./ir.js";
import { regexToNode } from "./regex.js";

/**
 * The lexical pieces of compact JSON as grammar IR: strings (any, length-bounded, or the JSON
 * encoding of text matching a regex or a format), numbers (any, or within bounds), and literals.
 */

/** Characters a JSON string holds unescaped. */
export const PLAIN: CharSet = [
  [0x20, 0x21],
  [0x23, 0x5b],
  [0x5d, MAX_CP],
];
const SHORT_ESCAPES: Record<number, string> = {
  8: "\\b",
  9: "\\t",
  10: "\\n",
  12: "\\f",
  13: "\\r",
  34: '\\"',
  92: "\\\\",
};
const HEX = charClass([
  [0x30, 0x39],
  [0x41, 0x46],
  [0x61, 0x66],
]);
export const DIGIT = byteRange(0x30, 0x39);

/** One escape sequence, any of JSON's. */
export const ESCAPE = seq(
  lit("\\"),
  alt(
    charClass([
      [0x22, 0x22],
      [0x2f, 0x2f],
      [0x5c, 0x5c],
      [0x62, 0x62],
      [0x66, 0x66],
      [0x6e, 0x6e],
      [0x72, 0x72],
      [0x74, 0x74],
    ]),
    seq(lit("u"), rep(HEX, 4, 4)),
  ),
);
/** One character of a JSON string's content, as written. */
export const STRING_UNIT = alt(charClass(PLAIN), ESCAPE);
export const ANY_STRING = seq(lit('"'), star(STRING_UNIT), lit('"'));

/**
 * One character from `set` as JSON writes it inside a string (JSON.stringify's choice: `\"`,
 * `\\`, the short escapes, `\u00XX` for other control characters).
 */
export function jsonChars(set: CharSet): Node {
  const xs: Node[] = [];
  const plain = intersect(set, PLAIN);
  if (plain.length > 0) xs.push(charClass(plain));
  for (const [a, b] of intersect(set, [
    [0, 0x1f],
    [0x22, 0x22],
    [0x5c, 0x5c],
  ]))
    for (let c = a; c <= b; c++) xs.push(lit(SHORT_ESCAPES[c] ?? `\\u${c.toString(16).padStart(4, "0")}`));
  return alt(...xs);
}

export const INTEGER = seq(opt(lit("-")), alt(lit("0"), seq(byteRange(0x31, 0x39), star(DIGIT))));
export const NUMBER = seq(
  INTEGER,
  opt(seq(lit("."), plus(DIGIT))),
  opt(
    seq(
      charClass([
        [0x45, 0x45],
        [0x65, 0x65],
      ]),
      opt(
        charClass([
          [0x2b, 0x2b],
          [0x2d, 0x2d],
        ]),
      ),
      plus(DIGIT),
    ),
  ),
);

/** Digit strings of the same length from a to b (a <= b), as IR. */
function sameLength(a: string, b: string): Node {
  if (a.length === 0) return EMPTY;
  if (/^0*$/.test(a.slice(1)) && /^9*$/.test(b.slice(1)))
    return seq(byteRange(a.charCodeAt(0), b.charCodeAt(0)), rep(DIGIT, a.length - 1, a.length - 1));
  if (a[0] === b[0]) return seq(lit(a[0]!), sameLength(a.slice(1), b.slice(1)));
  const n = a.length - 1;
  const xs = [seq(lit(a[0]!), sameLength(a.slice(1), "9".repeat(n)))];
  const a0 = a.charCodeAt(0);
  const b0 = b.charCodeAt(0);
  if (a0 + 1 <= b0 - 1) xs.push(seq(byteRange(a0 + 1, b0 - 1), rep(DIGIT, n, n)));
  xs.push(seq(lit(b[0]!), sameLength("0".repeat(n), b.slice(1))));
  return alt(...xs);
}

/** Non-negative integers in [lo, hi] (hi null: unbounded), written without leading zeros. */
export function uintRange(lo: bigint, hi: bigint | null): Node {
  if (lo < 0n) lo = 0n;
  if (hi !== null && lo > hi) return alt();
  const ls = lo.toString();
  const hs = hi?.toString();
  const xs: Node[] = [];
  const maxLen = hs === undefined ? ls.length : hs.length;
  for (let len = ls.length; len <= maxLen; len++) {
    const a = len === ls.length ? ls : `1${"0".repeat(len - 1)}`;
    const b = hs !== undefined && len === hs.length ? hs : "9".repeat(len);
    xs.push(sameLength(a, b));
  }
  if (hi === null) xs.push(seq(byteRange(0x31, 0x39), rep(DIGIT, ls.length, Number.POSITIVE_INFINITY)));
  return alt(...xs);
}

export interface Bound {
  v: bigint;
  excl: boolean;
}

/** Integers within bounds (either may be null). */
export function integerRange(lo: bigint | null, hi: bigint | null): Node {
  const xs: Node[] = [];
  if (hi === null || hi >= 0n) xs.push(uintRange(lo !== null && lo > 0n ? lo : 0n, hi));
  if (lo === null || lo < 0n) {
    const mlo = hi !== null && hi < 0n ? -hi : 1n;
    xs.push(seq(lit("-"), uintRange(mlo, lo === null ? null : -lo)));
  }
  return alt(...xs);
}

const FRAC = opt(seq(lit("."), plus(DIGIT)));
const FRAC_NONZERO = seq(lit("."), star(DIGIT), byteRange(0x31, 0x39), star(DIGIT));
const FRAC_ZERO = opt(seq(lit("."), plus(lit("0"))));

/** Magnitudes I(.F)? in the range from lo to hi (hi null: unbounded), lo.v >= 0. */
function magnitude(lo: Bound, hi: Bound | null): Node {
  const xs: Node[] = [];
  const iMin = lo.excl ? lo.v + 1n : lo.v;
  const iMax = hi === null ? null : hi.v - 1n;
  if (iMax === null || iMin <= iMax) xs.push(seq(uintRange(iMin, iMax), FRAC));
  if (lo.excl && (hi === null || hi.v > lo.v)) xs.push(seq(uintRange(lo.v, lo.v), FRAC_NONZERO));
  if (hi !== null && !hi.excl && (hi.v > lo.v || (hi.v === lo.v && !lo.excl)))
    xs.push(seq(uintRange(hi.v, hi.v), FRAC_ZERO));
  return alt(...xs);
}

/** Numbers (no exponent) within integer bounds; either bound may be null. */
export function numberRange(lo: Bound | null, hi: Bound | null): Node {
  const xs: Node[] = [];
  // v >= 0
  if (hi === null || hi.v > 0n || (hi.v === 0n && !hi.excl)) {
    const mlo = lo !== null && lo.v >= 0n ? lo : { v: 0n, excl: false };
    xs.push(magnitude(mlo, hi));
  }
  // v < 0: v = -m with m > 0
  if (lo === null || lo.v < 0n) {
    const mlo: Bound = hi !== null && hi.v < 0n ? { v: -hi.v, excl: hi.excl } : { v: 0n, excl: true };
    const mhi: Bound | null = lo === null ? null : { v: -lo.v, excl: lo.excl };
    xs.push(seq(lit("-"), magnitude(mlo, mhi)));
  }
  return alt(...xs);
}

// Formats: subsets of what ajv-formats' "full" mode accepts, so a generated value always validates.
const D = "[0-9]";
const DATE = `${D}{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]${D}|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]${D}|30)|02-(?:0[1-9]|1${D}|2[0-8]))`;
const TIME = `(?:[01]${D}|2[0-3]):[0-5]${D}:[0-5]${D}(?:\\.${D}+)?(?:Z|z|[+-](?:[01]${D}|2[0-3]):[0-5]${D})`;
const OCTET = `(?:25[0-5]|2[0-4]${D}|1${D}${D}|[1-9]?${D})`;
const HEXD = "[0-9a-fA-F]";
const LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?";
const PCT = `%${HEXD}{2}`;
const PCHAR = `(?:[A-Za-z0-9\\-._~!$&'()*+,;=:@]|${PCT})`;
const FORMATS: Record<string, string> = {
  "date-time": `${DATE}T${TIME}`,
  date: DATE,
  time: TIME,
  uuid: `${HEXD}{8}-${HEXD}{4}-${HEXD}{4}-${HEXD}{4}-${HEXD}{12}`,
  email: `[A-Za-z0-9_%+-]+(?:\\.[A-Za-z0-9_%+-]+)*@${LABEL}(?:\\.${LABEL})+`,
  ipv4: `${OCTET}(?:\\.${OCTET}){3}`,
  uri: `[A-Za-z][A-Za-z0-9+\\-.]*:(?://(?:[A-Za-z0-9\\-._~!$&'()*+,;=]|${PCT})*(?::${D}*)?(?:/${PCHAR}*)*|${PCHAR}+(?:/${PCHAR}*)*)(?:\\?(?:${PCHAR}|[/?])*)?(?:#(?:${PCHAR}|[/?])*)?`,
};

export const SUPPORTED_FORMATS = Object.keys(FORMATS);

/** A JSON string holding a value of this format. */
export function formatString(format: string, field: string): Node {
  const re = FORMATS[format];
  if (re === undefined)
    throw new GrammarError(
      field,
      `format "${format}" is not supported (supported: ${SUPPORTED_FORMATS.join(", ")})`,
    );
  return seq(lit('"'), regexToNode(re, field, jsonChars), lit('"'));
}

/** A JSON string (with quotes) whose value is none of `names` (additional property keys). */
export function stringExcluding(names: string[]): Node {
  if (names.length === 0) return ANY_STRING;
  interface T {
    kids: Map<string, T>;
    end: boolean;
  }
  const root: T = { kids: new Map(), end: false };
  for (const name of names) {
    const enc = JSON.stringify(name).slice(1, -1);
    let t = root;
    for (let i = 0; i < enc.length; ) {
      let unit: string;
      if (enc[i] === "\\") unit = enc.slice(i, i + (enc[i + 1] === "u" ? 6 : 2));
      else unit = String.fromCodePoint(enc.codePointAt(i)!);
      i += unit.length;
      let k = t.kids.get(unit);
      if (!k) {
        k = { kids: new Map(), end: false };
        t.kids.set(unit, k);
      }
      t = k;
    }
    t.end = true;
  }
  const rest = seq(star(STRING_UNIT), lit('"'));
  const gen = (t: T): Node => {
    const xs: Node[] = [];
    if (!t.end) xs.push(lit('"'));
    const plainKids: CharSet = [];
    const escKids = new Set<string>();
    for (const u of t.kids.keys()) {
      if (u.startsWith("\\")) escKids.add(u);
      else plainKids.push([u.codePointAt(0)!, u.codePointAt(0)!]);
    }
    const div = subtract(PLAIN, plainKids);
    if (div.length > 0) xs.push(seq(charClass(div), rest));
    const shortEsc: CharSet = [];
    for (const c of '"/\\bfnrt')
      if (!escKids.has(`\\${c}`)) shortEsc.push([c.charCodeAt(0), c.charCodeAt(0)]);
    if (shortEsc.length > 0) xs.push(seq(lit("\\"), charClass(shortEsc), rest));
    if (![...escKids].some((u) => u.startsWith("\\u"))) xs.push(seq(lit("\\u"), rep(HEX, 4, 4), rest));
    for (const [u, k] of t.kids) xs.push(seq(lit(u), gen(k)));
    return alt(...xs);
  };
  return seq(lit('"'), gen(root));
}
