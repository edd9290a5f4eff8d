import { type CharSet, normalize } from "./ir.js";

/**
 * Case-insensitive matching (a Lark "literal"i, a regex's `i` flag): a character matches when any
 * character of its case class does. Case classes are the code points that share a simple
 * (one code point to one code point) upper-then-lower mapping; multi-character mappings (ß → SS)
 * are left out, as simple case folding leaves them out.
 */

/** Upper bound of the code points with a case mapping (the last cased letters are below it). */
const CASED_END = 0x20000;

let classes: number[][] | undefined;

/** The case classes with more than one member, built once. */
function caseClasses(): number[][] {
  if (classes) return classes;
  const byKey = new Map<number, number[]>();
  for (let cp = 0; cp < CASED_END; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const ch = String.fromCodePoint(cp);
    const up = ch.toUpperCase();
    if (up === ch && ch.toLowerCase() === ch) continue; // no case
    const u = up.codePointAt(0)!;
    if (up.length !== (u > 0xffff ? 2 : 1)) continue;
    const low = up.toLowerCase();
    const key = low.codePointAt(0)!;
    if (low.length !== (key > 0xffff ? 2 : 1)) continue;
    let c = byKey.get(key);
    if (!c) {
      c = [];
      byKey.set(key, c);
    }
    c.push(cp);
  }
  classes = [...byKey.values()].filter((c) => c.length > 1);
  return classes;
}

const contains = (set: CharSet, cp: number): boolean => {
  let lo = 0;
  let hi = set.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [a, b] = set[mid]!;
    if (cp < a) hi = mid - 1;
    else if (cp > b) lo = mid + 1;
    else return true;
  }
  return false;
};

/** `set` with every character's case class added. */
export function caseFold(set: CharSet): CharSet {
  const n = normalize(set);
  const out: CharSet = n.map(([a, b]) => [a, b]);
  for (const c of caseClasses()) if (c.some((cp) => contains(n, cp))) for (const cp of c) out.push([cp, cp]);
  return normalize(out);
}
