import { caseFold } from "./case-fold.js";
import { GrammarError } from "./constraint.js";
import {
  ANY_CHAR,
  type CharSet,
  charClass,
  complement,
  EMPTY,
  MAX_CP,
  type Node,
  alt as nAlt,
  normalize,
  rep as nRep,
  seq as nSeq,
} from "./ir.js";

/**
 * Regular expressions (the common subset of ECMAScript, Python and Rust syntax: literals, escapes,
 * classes, `.`, groups, alternation, greedy or lazy quantifiers) lowered to grammar IR. Each
 * character class goes through `chars`, so the same pattern can mean raw UTF-8 text (`regex`
 * specs) or the content of a JSON string (JSON Schema `pattern`, where `"` is written `\"`).
 * Back-references, look-around and word boundaries are refused: they are not regular.
 */

export type CharMapper = (set: CharSet) => Node;

const DIGIT: CharSet = [[0x30, 0x39]];
const WORD: CharSet = [
  [0x30, 0x39],
  [0x41, 0x5a],
  [0x5f, 0x5f],
  [0x61, 0x7a],
];
const SPACE: CharSet = normalize([
  [0x09, 0x0d],
  [0x20, 0x20],
  [0xa0, 0xa0],
  [0x1680, 0x1680],
  [0x2000, 0x200a],
  [0x2028, 0x2029],
  [0x202f, 0x202f],
  [0x205f, 0x205f],
  [0x3000, 0x3000],
  [0xfeff, 0xfeff],
]);
const DOT: CharSet = complement([
  [0x0a, 0x0a],
  [0x0d, 0x0d],
  [0x2028, 0x2029],
]);

/** Largest count a `{n,m}` may name (bigger ones are refused: they would build huge automata). */
const MAX_REPEAT = 1000;
/** Deepest nesting of groups accepted (deeper would exhaust the parser's stack). */
const MAX_DEPTH = 100;

/** How a pattern is read where the dialects differ (Lark's regexes are Python's). */
export interface RegexOptions {
  /** What `.` matches (default: anything but \n, \r, U+2028, U+2029, as in ECMAScript). */
  dot?: CharSet;
  /** Refuse ^ and $ (they are no-ops at the ends of a whole-text regex, not inside a grammar). */
  noAnchors?: boolean;
  /** Case-insensitive: literal characters and classes match their whole case class. */
  ignoreCase?: boolean;
  /** Python's `{,n}` (0 to n); elsewhere it is literal text. */
  pythonBraces?: boolean;
}

interface Parsed {
  node: Node;
  anchoredStart: boolean;
  anchoredEnd: boolean;
}

class RegexParser {
  private i = 0;
  private depth = 0;
  constructor(
    private readonly src: string,
    private readonly field: string,
    private readonly chars: CharMapper,
    private readonly opts: RegexOptions = {},
  ) {}

  /** A set of characters written literally (a character or a class): folded under ignoreCase. */
  private fold(set: CharSet): CharSet {
    return this.opts.ignoreCase ? caseFold(set) : set;
  }

  private fail(reason: string): never {
    throw new GrammarError(this.field, `${reason} at offset ${this.i} of /${this.src}/`);
  }
  private peek(): string | undefined {
    return this.src[this.i];
  }
  private cp(): number {
    const c = this.src.codePointAt(this.i);
    if (c === undefined) this.fail("unexpected end");
    this.i += c > 0xffff ? 2 : 1;
    return c;
  }

  /** The top level: alternatives, each maybe anchored with ^ / $. */
  parseTop(): Parsed[] {
    const out: Parsed[] = [];
    for (;;) {
      let anchoredStart = false;
      if (this.peek() === "^") {
        if (this.opts.noAnchors) this.fail("anchors (^) are not supported here");
        this.i++;
        anchoredStart = true;
      }
      const items: Node[] = [];
      let anchoredEnd = false;
      while (this.i < this.src.length && this.peek() !== "|") {
        if (this.peek() === "$") {
          if (this.opts.noAnchors) this.fail("anchors ($) are not supported here");
          this.i++;
          if (this.i < this.src.length && this.peek() !== "|") this.fail("$ is supported only at the end");
          anchoredEnd = true;
          break;
        }
        items.push(this.parseQuantified());
      }
      out.push({ node: nSeq(...items), anchoredStart, anchoredEnd });
      if (this.peek() === "|") {
        this.i++;
        continue;
      }
      if (this.i < this.src.length) this.fail("unbalanced )");
      return out;
    }
  }

  private parseAlt(): Node {
    const alts: Node[] = [];
    for (;;) {
      const items: Node[] = [];
      while (this.i < this.src.length && this.peek() !== "|" && this.peek() !== ")")
        items.push(this.parseQuantified());
      alts.push(items.length === 0 ? EMPTY : nSeq(...items));
      if (this.peek() !== "|") return nAlt(...alts);
      this.i++;
    }
  }

  private parseQuantified(): Node {
    let atom = this.parseAtom();
    for (;;) {
      const c = this.peek();
      let min: number;
      let max: number;
      if (c === "*") [min, max] = [0, Number.POSITIVE_INFINITY];
      else if (c === "+") [min, max] = [1, Number.POSITIVE_INFINITY];
      else if (c === "?") [min, max] = [0, 1];
      else if (c === "{") {
        const m = (this.opts.pythonBraces ? /^\{(\d*)(,(\d*))?\}/ : /^\{(\d+)(,(\d*))?\}/).exec(
          this.src.slice(this.i),
        );
        if (!m || (m[1] === "" && m[2] === undefined)) return atom; // a literal "{" as in ECMAScript's annex B
        min = m[1] === "" ? 0 : Number(m[1]);
        max = m[2] === undefined ? min : m[3] === "" ? Number.POSITIVE_INFINITY : Number(m[3]);
        if (min > max) this.fail("{n,m} with n > m");
        if (min > MAX_REPEAT || (max !== Number.POSITIVE_INFINITY && max > MAX_REPEAT))
          this.fail(`repetition count over ${MAX_REPEAT}`);
        this.i += m[0].length - 1;
      } else return atom;
      this.i++;
      if (this.peek() === "?" || this.peek() === "+") this.i++; // lazy / possessive: same language
      atom = nRep(atom, min, max);
    }
  }

  private parseAtom(): Node {
    const c = this.peek();
    if (c === "(") {
      if (++this.depth > MAX_DEPTH) this.fail(`groups nested deeper than ${MAX_DEPTH}`);
      this.i++;
      if (this.peek() === "?") {
        const rest = this.src.slice(this.i);
        if (rest.startsWith("?:")) this.i += 2;
        else if (/^\?P?<[A-Za-z_][A-Za-z0-9_]*>/.test(rest)) this.i = this.src.indexOf(">", this.i) + 1;
        else this.fail("look-around and inline flags are not supported");
      }
      const inner = this.parseAlt();
      if (this.peek() !== ")") this.fail("missing )");
      this.i++;
      this.depth--;
      return inner;
    }
    if (c === ")") this.fail("unbalanced )");
    if (c === "*" || c === "+" || c === "?") this.fail("nothing to repeat");
    if (c === "^" || c === "$") this.fail(`${c} is supported only at the start / end`);
    if (c === "[") return this.chars(this.parseClass());
    if (c === ".") {
      this.i++;
      return this.chars(this.opts.dot ?? DOT);
    }
    if (c === "\\") return this.chars(this.foldOne(this.parseEscape(false)));
    const cp = this.cp();
    return this.chars(this.fold([[cp, cp]]));
  }

  /** An escape's set, folded when it is one character (\x41), not a class (\w, \D). */
  private foldOne(set: CharSet): CharSet {
    return set.length === 1 && set[0]![0] === set[0]![1] ? this.fold(set) : set;
  }

  /** After a backslash: a class (\d) or one character. */
  private parseEscape(inClass: boolean): CharSet {
    this.i++;
    const c = this.peek();
    if (c === undefined) this.fail("trailing backslash");
    this.i++;
    switch (c) {
      case "d":
        return DIGIT;
      case "D":
        return complement(DIGIT);
      case "w":
        return WORD;
      case "W":
        return complement(WORD);
      case "s":
        return SPACE;
      case "S":
        return complement(SPACE);
      case "n":
        return [[10, 10]];
      case "r":
        return [[13, 13]];
      case "t":
        return [[9, 9]];
      case "f":
        return [[12, 12]];
      case "v":
        return [[11, 11]];
      case "0":
        return [[0, 0]];
      case "b":
        if (inClass) return [[8, 8]];
        this.fail("word boundaries are not supported");
        break;
      case "B":
      case "A":
      case "z":
      case "Z":
      case "G":
        this.fail(`\\${c} is not supported`);
        break;
      case "x": {
        const m = /^[0-9a-fA-F]{2}/.exec(this.src.slice(this.i));
        if (!m) this.fail("bad \\x escape");
        this.i += 2;
        const v = Number.parseInt(m[0], 16);
        return [[v, v]];
      }
      case "u": {
        const m = /^(?:\{([0-9a-fA-F]{1,6})\}|([0-9a-fA-F]{4}))/.exec(this.src.slice(this.i));
        if (!m) this.fail("bad \\u escape");
        this.i += m[0].length;
        const v = Number.parseInt(m[1] ?? m[2]!, 16);
        if (v > MAX_CP) this.fail("code point out of range");
        return [[v, v]];
      }
      case "p":
      case "P":
        this.fail("Unicode property classes are not supported");
    }
    if (/[1-9]/.test(c)) this.fail("back-references are not supported");
    if (/[A-Za-z]/.test(c)) this.fail(`unknown escape \\${c}`);
    const v = c.codePointAt(0)!;
    return [[v, v]];
  }

  private parseClass(): CharSet {
    this.i++; // [
    let negate = false;
    if (this.peek() === "^") {
      negate = true;
      this.i++;
    }
    const set: CharSet = [];
    let first = true;
    for (;;) {
      const c = this.peek();
      if (c === undefined) this.fail("missing ]");
      if (c === "]" && !first) {
        this.i++;
        break;
      }
      first = false;
      let lo: CharSet;
      if (c === "\\") lo = this.parseEscape(true);
      else if (c === "[" && this.src[this.i + 1] === ":") this.fail("POSIX classes are not supported");
      else {
        const v = this.cp();
        lo = [[v, v]];
      }
      if (
        this.peek() === "-" &&
        this.src[this.i + 1] !== "]" &&
        this.src[this.i + 1] !== undefined &&
        lo.length === 1 &&
        lo[0]![0] === lo[0]![1]
      ) {
        this.i++;
        let hi: CharSet;
        if (this.peek() === "\\") hi = this.parseEscape(true);
        else {
          const v = this.cp();
          hi = [[v, v]];
        }
        if (hi.length !== 1 || hi[0]![0] !== hi[0]![1]) this.fail("bad class range");
        const a = lo[0]![0];
        const b = hi[0]![0];
        if (a > b) this.fail("class range out of order");
        set.push([a, b]);
      } else set.push(...lo);
    }
    // Folded before negation, as Python does: [^a] under the i flag matches neither a nor A.
    const n = this.fold(normalize(set));
    return negate ? complement(n) : n;
  }
}

/** A whole-text regex (`regex` specs): anchors at the ends are allowed and change nothing. */
export function regexToNode(
  pattern: string,
  field: string,
  chars: CharMapper = charClass,
  opts: RegexOptions = {},
): Node {
  const alts = new RegexParser(pattern, field, chars, opts).parseTop();
  return nAlt(...alts.map((a) => a.node));
}

/**
 * A JSON Schema `pattern`: a search, not a whole match, so an alternative without `^` may be
 * preceded, and one without `$` followed, by any text.
 */
export function searchRegexToNode(pattern: string, field: string, chars: CharMapper): Node {
  const alts = new RegexParser(pattern, field, chars).parseTop();
  const any = nRep(chars(ANY_CHAR), 0, Number.POSITIVE_INFINITY);
  return nAlt(
    ...alts.map((a) => nSeq(...(a.anchoredStart ? [] : [any]), a.node, ...(a.anchoredEnd ? [] : [any]))),
  );
}
