/**
 * The grammar IR every front end (JSON Schema, regex, choice, GBNF, Lark) lowers to: named rules
 * over bytes, with sequence, alternation, bounded or unbounded repetition, references to other
 * rules, and `props` (an ordered list of optional items joined by a separator, the shape of a JSON
 * object's properties, kept linear so it compiles without copying each property per position).
 * Characters are code-point ranges lowered to UTF-8 byte ranges here, so the automaton is byte-level.
 */

export type Node =
  /** One byte in [lo, hi] for one of the ranges. */
  | { k: "bytes"; ranges: ReadonlyArray<readonly [number, number]> }
  /** One of these byte-range sequences (a character class in UTF-8): built with shared suffixes. */
  | { k: "utf8"; seqs: ReadonlyArray<ReadonlyArray<readonly [number, number]>> }
  | { k: "seq"; xs: Node[] }
  | { k: "alt"; xs: Node[] }
  /** `x` repeated min..max times (max may be Infinity). */
  | { k: "rep"; x: Node; min: number; max: number }
  | { k: "ref"; name: string }
  /**
   * Items in order, each present or (when `opt`) skipped, the present ones joined by `sep`;
   * then, when `extra` is given, any number of `extra` items, joined the same way.
   */
  | { k: "props"; items: { x: Node; opt: boolean }[]; sep: Node; extra?: Node }
  /** Any bytes (none included) that do not hold `text` anywhere: the free text of a triggered grammar. */
  | { k: "avoid"; text: Uint8Array };

export interface Grammar {
  rules: Map<string, Node>;
  start: string;
}

/** A set of code points as sorted, disjoint, inclusive ranges. */
export type CharSet = Array<[number, number]>;

export const MAX_CP = 0x10ffff;

export const EMPTY: Node = { k: "seq", xs: [] };

export const seq = (...xs: Node[]): Node => (xs.length === 1 ? xs[0]! : { k: "seq", xs });
export const alt = (...xs: Node[]): Node => (xs.length === 1 ? xs[0]! : { k: "alt", xs });
export const rep = (x: Node, min: number, max: number): Node => ({ k: "rep", x, min, max });
export const opt = (x: Node): Node => rep(x, 0, 1);
export const star = (x: Node): Node => rep(x, 0, Number.POSITIVE_INFINITY);
export const plus = (x: Node): Node => rep(x, 1, Number.POSITIVE_INFINITY);
export const ref = (name: string): Node => ({ k: "ref", name });
export const byteRange = (lo: number, hi: number): Node => ({ k: "bytes", ranges: [[lo, hi]] });

const encoder = new TextEncoder();

/** The exact bytes of `s` (UTF-8). */
export function bytesLit(b: Uint8Array): Node {
  return seq(...Array.from(b, (x) => byteRange(x, x)));
}
export const lit = (s: string): Node => bytesLit(encoder.encode(s));

/** Normalizes ranges: sorted, merged, clipped to valid code points. */
export function normalize(set: CharSet): CharSet {
  const s = set
    .map(([a, b]): [number, number] => [Math.max(0, a), Math.min(MAX_CP, b)])
    .filter(([a, b]) => a <= b)
    .sort((x, y) => x[0] - y[0]);
  const out: CharSet = [];
  for (const r of s) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

export function complement(set: CharSet): CharSet {
  const n = normalize(set);
  const out: CharSet = [];
  let next = 0;
  for (const [a, b] of n) {
    if (a > next) out.push([next, a - 1]);
    next = b + 1;
  }
  if (next <= MAX_CP) out.push([next, MAX_CP]);
  return out;
}

export function subtract(a: CharSet, b: CharSet): CharSet {
  return intersect(a, complement(b));
}

export function intersect(a: CharSet, b: CharSet): CharSet {
  const x = normalize(a);
  const y = normalize(b);
  const out: CharSet = [];
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    const lo = Math.max(x[i]![0], y[j]![0]);
    const hi = Math.min(x[i]![1], y[j]![1]);
    if (lo <= hi) out.push([lo, hi]);
    if (x[i]![1] < y[j]![1]) i++;
    else j++;
  }
  return out;
}

const utf8Len = (cp: number) => (cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);

function utf8Encode(cp: number): number[] {
  if (cp < 0x80) return [cp];
  if (cp < 0x800) return [0xc0 | (cp >> 6), 0x80 | (cp & 63)];
  if (cp < 0x10000) return [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)];
  return [0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)];
}

/** Splits a code-point range into byte-range sequences whose UTF-8 encodings are exactly it. */
function utf8Sequences(lo: number, hi: number, out: Array<Array<[number, number]>>): void {
  if (lo > hi) return;
  for (const b of [0x7f, 0x7ff, 0xffff]) {
    if (lo <= b && hi > b) {
      utf8Sequences(lo, b, out);
      utf8Sequences(b + 1, hi, out);
      return;
    }
  }
  if (lo <= 0xdfff && hi >= 0xd800) {
    // Surrogates are not characters: UTF-8 never encodes them.
    if (lo < 0xd800) utf8Sequences(lo, 0xd7ff, out);
    if (hi > 0xdfff) utf8Sequences(0xe000, hi, out);
    return;
  }
  const n = utf8Len(lo);
  for (let i = 1; i < n; i++) {
    const m = (1 << (6 * i)) - 1;
    if ((lo & ~m) !== (hi & ~m)) {
      if ((lo & m) !== 0) {
        utf8Sequences(lo, lo | m, out);
        utf8Sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) !== m) {
        utf8Sequences(lo, (hi & ~m) - 1, out);
        utf8Sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  const a = utf8Encode(lo);
  const b = utf8Encode(hi);
  out.push(a.map((x, i): [number, number] => [x, b[i]!]));
}

/** One character from `set`, as UTF-8 bytes. */
export function charClass(set: CharSet): Node {
  const seqs: Array<Array<[number, number]>> = [];
  for (const [a, b] of normalize(set)) utf8Sequences(a, b, seqs);
  if (seqs.length === 0) return { k: "alt", xs: [] };
  if (seqs.every((s) => s.length === 1)) return { k: "bytes", ranges: seqs.map((s) => s[0]!) };
  return { k: "utf8", seqs };
}

/** Any Unicode scalar value. */
export const ANY_CHAR: CharSet = [[0, MAX_CP]];
