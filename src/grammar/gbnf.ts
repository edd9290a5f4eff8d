import { GrammarError } from "./constraint.js";
import {
  ANY_CHAR,
  alt,
  type CharSet,
  charClass,
  complement,
  EMPTY,
  type Grammar,
  lit,
  MAX_CP,
  type Node,
  normalize,
  ref,
  rep,
  seq,
} from "./ir.js";

/**
 * llama.cpp's GBNF: `name ::= alternatives` rules, "literals", [classes] (with ^ and ranges),
 * `.`, ( groups ), rule names, postfix * + ? {m} {m,} {m,n}, # comments. The start rule is `root`.
 */
export function gbnfGrammar(src: string, field = "grammar"): Grammar {
  const p = new GbnfParser(src, field);
  const rules = p.parse();
  if (!rules.has("root")) throw new GrammarError(field, "no rule named root");
  for (const name of p.referenced)
    if (!rules.has(name)) throw new GrammarError(field, `rule "${name}" is used but not defined`);
  return { rules, start: "root" };
}

const NAME = /^[a-zA-Z0-9_-]+/;
/** Deepest nesting of ( ) accepted (deeper would exhaust the parser's stack: a RangeError, not a GrammarError). */
const MAX_DEPTH = 100;

class GbnfParser {
  private i = 0;
  readonly referenced = new Set<string>();
  constructor(
    private readonly s: string,
    private readonly field: string,
  ) {}

  private fail(reason: string): never {
    const line = this.s.slice(0, this.i).split("\n").length;
    throw new GrammarError(this.field, `${reason} (line ${line})`);
  }

  /** Skips spaces and comments; newlines too when `newlines`. */
  private ws(newlines: boolean): void {
    for (;;) {
      const c = this.s[this.i];
      if (c === "#") {
        while (this.i < this.s.length && this.s[this.i] !== "\n") this.i++;
      } else if (c === " " || c === "\t" || (newlines && (c === "\n" || c === "\r"))) this.i++;
      else if (c === "\r" || c === "\n") {
        // a newline continues the rule when the next line is indented or starts with | or )
        let j = this.i;
        while (j < this.s.length && /[\r\n \t]/.test(this.s[j]!)) j++;
        const rest = this.s.slice(j);
        if (j < this.s.length && !/^[a-zA-Z0-9_-]+\s*::=/.test(rest)) this.i = j;
        else return;
      } else return;
    }
  }

  parse(): Map<string, Node> {
    const rules = new Map<string, Node>();
    this.ws(true);
    while (this.i < this.s.length) {
      const m = NAME.exec(this.s.slice(this.i));
      if (!m) this.fail("expected a rule name");
      this.i += m[0].length;
      this.ws(false);
      if (!this.s.startsWith("::=", this.i)) this.fail(`expected ::= after "${m[0]}"`);
      this.i += 3;
      this.ws(false);
      const body = this.alternatives(0);
      if (rules.has(m[0])) this.fail(`rule "${m[0]}" defined twice`);
      rules.set(m[0], body);
      this.ws(true);
    }
    return rules;
  }

  private alternatives(depth: number): Node {
    const alts: Node[] = [this.sequence(depth)];
    while (this.s[this.i] === "|") {
      this.i++;
      this.ws(depth > 0);
      alts.push(this.sequence(depth));
    }
    return alt(...alts);
  }

  private sequence(depth: number): Node {
    const items: Node[] = [];
    for (;;) {
      this.ws(depth > 0);
      const c = this.s[this.i];
      if (c === undefined || c === "|" || c === ")" || c === "\n" || c === "\r") break;
      let atom = this.atom(depth);
      for (;;) {
        const q = this.s[this.i];
        if (q === "*") atom = rep(atom, 0, Number.POSITIVE_INFINITY);
        else if (q === "+") atom = rep(atom, 1, Number.POSITIVE_INFINITY);
        else if (q === "?") atom = rep(atom, 0, 1);
        else if (q === "{") {
          const m = /^\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}/.exec(this.s.slice(this.i));
          if (!m) this.fail("bad {m,n}");
          const min = Number(m[1]);
          const max = m[2] === undefined ? min : m[3] === "" ? Number.POSITIVE_INFINITY : Number(m[3]);
          if (min > max || min > 1000 || (max !== Number.POSITIVE_INFINITY && max > 1000))
            this.fail("bad repetition count");
          this.i += m[0].length - 1;
          atom = rep(atom, min, max);
        } else break;
        this.i++;
      }
      items.push(atom);
    }
    return items.length === 0 ? EMPTY : seq(...items);
  }

  private atom(depth: number): Node {
    const c = this.s[this.i]!;
    if (c === '"') {
      this.i++;
      let out = "";
      while (this.s[this.i] !== '"') {
        if (this.i >= this.s.length) this.fail("unterminated literal");
        out += String.fromCodePoint(this.char());
      }
      this.i++;
      return lit(out);
    }
    if (c === "[") {
      this.i++;
      let negate = false;
      if (this.s[this.i] === "^") {
        negate = true;
        this.i++;
      }
      const set: CharSet = [];
      while (this.s[this.i] !== "]") {
        if (this.i >= this.s.length) this.fail("unterminated class");
        const a = this.char();
        let b = a;
        if (this.s[this.i] === "-" && this.s[this.i + 1] !== "]") {
          this.i++;
          b = this.char();
        }
        if (b < a) this.fail("class range out of order");
        set.push([a, b]);
      }
      this.i++;
      return charClass(negate ? complement(normalize(set)) : set);
    }
    if (c === ".") {
      this.i++;
      return charClass(ANY_CHAR);
    }
    if (c === "(") {
      if (depth >= MAX_DEPTH) this.fail(`( nested deeper than ${MAX_DEPTH}`);
      this.i++;
      this.ws(true);
      const inner = this.alternatives(depth + 1);
      this.ws(true);
      if (this.s[this.i] !== ")") this.fail("missing )");
      this.i++;
      return inner;
    }
    const m = NAME.exec(this.s.slice(this.i));
    if (!m) this.fail(`unexpected "${c}"`);
    this.i += m[0].length;
    this.referenced.add(m[0]);
    return ref(m[0]);
  }

  /** One character of a literal or class, with GBNF's escapes. */
  private char(): number {
    const c = this.s.codePointAt(this.i)!;
    if (c !== 0x5c) {
      this.i += c > 0xffff ? 2 : 1;
      return c;
    }
    const e = this.s[this.i + 1];
    this.i += 2;
    const simple: Record<string, number> = {
      n: 10,
      r: 13,
      t: 9,
      "\\": 92,
      '"': 34,
      "[": 91,
      "]": 93,
      "-": 45,
      "^": 94,
    };
    if (e !== undefined && e in simple) return simple[e]!;
    const len = e === "x" ? 2 : e === "u" ? 4 : e === "U" ? 8 : 0;
    if (len === 0) this.fail(`unknown escape \\${e}`);
    const hex = this.s.slice(this.i, this.i + len);
    if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== len) this.fail("bad hex escape");
    this.i += len;
    const v = Number.parseInt(hex, 16);
    if (v > MAX_CP) this.fail("code point out of range");
    return v;
  }
}
