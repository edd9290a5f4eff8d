/**
 * Unicode helpers shared by the tokenizers: code point classes as llama.cpp's
 * pre-tokenizers see them, the GPT-2 byte↔unicode table, and UTF-8 utilities.
 */

/**
 * Class of a code point: one of the general categories the pre-tokenizer regexes name.
 * CP_OTHER covers control, format, private use, non-whitespace separators and unassigned.
 */
export const CP_OTHER = 0;
export const CP_NUMBER = 1; // \p{N}
export const CP_LETTER = 2; // \p{L}
export const CP_PUNCT = 3; // \p{P}
export const CP_MARK = 4; // \p{M}
export const CP_SYMBOL = 5; // \p{S}

/**
 * Whitespace as llama.cpp defines it: the ASCII controls \t..\r, space, NEL, NBSP and the
 * Unicode space separators, line and paragraph separators. Unlike JavaScript's \s it has
 * U+0085 and lacks U+FEFF.
 */
export function isWhitespace(cp: number): boolean {
  if (cp <= 0x20) return cp === 0x20 || (cp >= 0x09 && cp <= 0x0d);
  if (cp < 0x85) return false;
  return (
    cp === 0x85 ||
    cp === 0xa0 ||
    cp === 0x1680 ||
    (cp >= 0x2000 && cp <= 0x200a) ||
    cp === 0x2028 ||
    cp === 0x2029 ||
    cp === 0x202f ||
    cp === 0x205f ||
    cp === 0x3000
  );
}

const RE_L = /^\p{L}$/u;
const RE_N = /^\p{N}$/u;
const RE_P = /^\p{P}$/u;
const RE_M = /^\p{M}$/u;
const RE_S = /^\p{S}$/u;

// 0 = not computed yet; otherwise class + 1. Filled lazily, one byte per code point.
let classCache: Uint8Array | undefined;

export function cpClass(cp: number): number {
  classCache ??= new Uint8Array(0x110000);
  const c = classCache[cp]!;
  if (c !== 0) return c - 1;
  const s = String.fromCodePoint(cp);
  let k: number;
  if (RE_L.test(s)) k = CP_LETTER;
  else if (RE_N.test(s)) k = CP_NUMBER;
  else if (RE_P.test(s)) k = CP_PUNCT;
  else if (RE_M.test(s)) k = CP_MARK;
  else if (RE_S.test(s)) k = CP_SYMBOL;
  else k = CP_OTHER;
  classCache[cp] = k + 1;
  return k;
}

/**
 * GPT-2's reversible byte → printable character table: printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100 onwards in byte order.
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const out: string[] = new Array(256);
  let next = 0x100;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = String.fromCharCode(printable ? b : next++);
  }
  return out;
})();

/** Inverse of BYTE_TO_CHAR, indexed by UTF-16 code unit; -1 for characters outside the table. */
export const CHAR_TO_BYTE: Int16Array = (() => {
  const out = new Int16Array(0x180).fill(-1);
  for (let b = 0; b < 256; b++) out[BYTE_TO_CHAR[b]!.charCodeAt(0)] = b;
  return out;
})();

const encoder = new TextEncoder();

export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** Replaces lone surrogates by U+FFFD, as UTF-8 encoding would, so string and byte views agree. */
export function wellFormed(s: string): string {
  // Fast path: most text has no surrogates at all.
  if (!/[\uD800-\uDFFF]/.test(s)) return s;
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

/** Concatenates byte arrays. */
export function concatBytes(parts: readonly Uint8Array[], total?: number): Uint8Array {
  const n = total ?? parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
