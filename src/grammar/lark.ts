import { caseFold } from "./case-fold.js";
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
  opt,
  plus,
  ref,
  rep,
  seq,
  star,
} from "./ir.js";
import { type RegexOptions, regexToNode } from "./regex.js";

/**
 * Lark's EBNF (the grammars vLLM's `structured_outputs.grammar` / `guided_grammar` take when no rule
 * is written `::=`), lowered to the grammar IR. The start symbol is the rule `start`.
 *
 * Read: rules `name: alternatives` (with `?` / `!` prefixes and `-> alias`, which shape Lark's tree,
 * and `.priority`, which picks among the parses of an ambiguous text: none of them changes which
 * texts are in the language), terminals `NAME: ...`, "strings" (with escapes and the `i` flag),
 * /regexes/ (Python's syntax through regex.ts; flags i, s, m, u; \d \w are ASCII there, so a
 * pattern takes a subset of what Python's Unicode classes take, never more), "a".."z" ranges, ( ) groups,
 * [ ] and ? optional, * + repetition, `~ n` and `~ n..m` (and `{n}`, `{m,n}` as llguidance writes
 * them), `%import common.X` for the common terminals (defined below by hand), and `%ignore`.
 *
 * The language is character-level, as with Lark's Earley parser and its dynamic lexer: a terminal is
 * a regular language matched where the rules put it, not a token of a longest-match lexer (so two
 * adjacent terminals that can run together take the split too). `%ignore X` lets any number of X
 * come before every terminal a rule uses (literals and regexes included) and after the last one,
 * which is where Lark's lexer skips them; never inside a terminal.
 *
 * Direct left recursion (`sum: sum "+" term | term`, Lark's usual style) is rewritten to repetition;
 * other left recursion is refused by the automaton. Anything else (templates, %declare, %override,
 * %extend, imports from elsewhere than `common`, the regex flags x and l, anchors, look-around) is a
 * GrammarError naming the construct and its line and column.
 */
export function larkGrammar(src: string, field = "grammar"): Grammar {
  return new LarkParser(src, field).parse();
}

/** Largest count `~ n..m` may name, as for GBNF's {m,n}. */
const MAX_REPEAT = 1000;

/** Deepest nesting of ( ) and [ ] accepted. */
const MAX_DEPTH = 100;

/** The start rule when %ignore adds trailing ignored text (a name Lark cannot write). */
const START = "%start";
/** The ignored terminals, any number of them. */
const IGNORE = "%ignore";

const NAME = /[_a-zA-Z][_a-zA-Z0-9]*/y;
const isTerminalName = (name: string) => /^_*[A-Z]/.test(name);

const digit: CharSet = [[0x30, 0x39]];
const cls = (...set: CharSet) => charClass(set);
const sign = () => opt(cls([0x2b, 0x2b], [0x2d, 0x2d]));
const int = () => plus(cls(...digit));
const decimal = () => alt(seq(int(), lit("."), opt(int())), seq(lit("."), int()));
const exponent = () => seq(cls([0x45, 0x45], [0x65, 0x65]), sign(), int());
const float = () => alt(seq(int(), exponent()), seq(decimal(), opt(exponent())));
const lcase: CharSet = [[0x61, 0x7a]];
const ucase: CharSet = [[0x41, 0x5a]];
const letter = () => cls(...ucase, ...lcase);

/**
 * The terminals of Lark's `common` library that grammars import, written here from their
 * definitions' meaning (numbers, names, whitespace, a double-quoted string with backslash escapes).
 */
const COMMON: Record<string, () => Node> = {
  DIGIT: () => cls(...digit),
  HEXDIGIT: () => cls([0x30, 0x39], [0x41, 0x46], [0x61, 0x66]),
  INT: int,
  SIGNED_INT: () => seq(sign(), int()),
  DECIMAL: decimal,
  FLOAT: float,
  SIGNED_FLOAT: () => seq(sign(), float()),
  NUMBER: () => alt(float(), int()),
  SIGNED_NUMBER: () => seq(sign(), alt(float(), int())),
  // " then characters other than " \ and newline, or \ and any character but a newline, then "
  ESCAPED_STRING: () =>
    seq(
      lit('"'),
      star(
        alt(
          charClass(
            complement([
              [0x0a, 0x0a],
              [0x22, 0x22],
              [0x5c, 0x5c],
            ]),
          ),
          seq(lit("\\"), charClass(complement([[0x0a, 0x0a]]))),
        ),
      ),
      lit('"'),
    ),
  LCASE_LETTER: () => cls(...lcase),
  UCASE_LETTER: () => cls(...ucase),
  LETTER: letter,
  WORD: () => plus(letter()),
  CNAME: () =>
    seq(cls([0x5f, 0x5f], ...ucase, ...lcase), star(cls([0x5f, 0x5f], ...ucase, ...lcase, ...digit))),
  WS_INLINE: () => plus(cls([0x09, 0x09], [0x20, 0x20])),
  WS: () => plus(cls([0x09, 0x0a], [0x0c, 0x0d], [0x20, 0x20])),
  CR: () => lit("\r"),
  LF: () => lit("\n"),
  NEWLINE: () => plus(seq(opt(lit("\r")), lit("\n"))),
};

/** Python's `.` (without the s flag): anything but a newline. */
const PY_DOT: CharSet = complement([[0x0a, 0x0a]]);

type Ctx = "rule" | "term";

class LarkParser {
  private i = 0;
  private readonly rules = new Map<string, Node>();
  /** Where each name was first used (for "undefined" errors) and where each was defined. */
  private readonly used = new Map<string, number>();
  private readonly defined = new Map<string, number>();
  /** Terminal → the terminals its definition uses (to refuse recursive terminals). */
  private readonly termRefs = new Map<string, Set<string>>();
  private readonly ignores: Node[] = [];
  private curTermRefs: Set<string> | undefined;

  constructor(
    private readonly s: string,
    private readonly field: string,
  ) {}

  /** `re` (sticky) matched where the parser stands, without copying the rest of the source. */
  private at(re: RegExp): RegExpExecArray | null {
    re.lastIndex = this.i;
    return re.exec(this.s);
  }

  private where(at: number): string {
    const before = this.s.slice(0, at);
    const line = before.split("\n").length;
    const col = at - (before.lastIndexOf("\n") + 1) + 1;
    return `line ${line}, column ${col}`;
  }

  private fail(reason: string, at = this.i): never {
    throw new GrammarError(this.field, `${reason} (${this.where(at)})`);
  }

  /** Skips spaces, tabs and comments (`//` and `#`, to the end of the line); newlines too when `newlines`. */
  private skip(newlines: boolean): void {
    for (;;) {
      const c = this.s[this.i];
      if (c === "#" || (c === "/" && this.s[this.i + 1] === "/")) {
        while (this.i < this.s.length && this.s[this.i] !== "\n") this.i++;
      } else if (c === " " || c === "\t" || (newlines && (c === "\n" || c === "\r"))) this.i++;
      else return;
    }
  }

  /** At depth 0, a newline ends the alternative unless the next line goes on with `|`. */
  private continues(): boolean {
    const save = this.i;
    this.skip(true);
    if (this.s[this.i] === "|") return true;
    this.i = save;
    return false;
  }

  parse(): Grammar {
    for (;;) {
      this.skip(true);
      if (this.i >= this.s.length) break;
      if (this.s[this.i] === "%") this.directive();
      else this.definition();
      this.endOfStatement();
    }
    for (const [name, at] of this.used)
      if (!this.rules.has(name))
        this.fail(`${isTerminalName(name) ? "terminal" : "rule"} ${name} is used but not defined`, at);
    this.refuseRecursiveTerminals();
    if (!this.rules.has("start")) this.fail("no rule named start (Lark's start symbol)", 0);
    for (const [name, body] of this.rules)
      if (!isTerminalName(name)) this.rules.set(name, this.unleft(name, body));
    this.rules.set(IGNORE, this.ignores.length === 0 ? EMPTY : star(alt(...this.ignores)));
    if (this.ignores.length === 0) return { rules: this.rules, start: "start" };
    this.rules.set(START, seq(ref("start"), ref(IGNORE)));
    return { rules: this.rules, start: START };
  }

  private endOfStatement(): void {
    this.skip(false);
    const c = this.s[this.i];
    if (c !== undefined && c !== "\n" && c !== "\r") this.fail(`unexpected "${c}"`);
  }

  private name(): string {
    const m = this.at(NAME);
    if (!m) this.fail("expected a name");
    this.i += m[0].length;
    return m[0];
  }

  private definition(): void {
    const start = this.i;
    let prefixed = false;
    while (this.s[this.i] === "?" || this.s[this.i] === "!") {
      this.i++;
      prefixed = true;
    }
    const nameAt = this.i;
    const name = this.name();
    const terminal = isTerminalName(name);
    if (terminal && prefixed) this.fail(`a terminal (${name}) cannot take a ? or ! prefix`, start);
    if (this.s[this.i] === "{") this.fail(`templates (${name}{...}) are not supported`);
    if (this.s[this.i] === ".") {
      // A priority picks among parses or tokens; the language read here is the same either way.
      const m = this.at(/\.-?\d+/y);
      if (!m) this.fail("expected a priority number after .");
      this.i += m[0].length;
    }
    this.skip(false);
    if (this.s[this.i] !== ":") this.fail(`expected ":" after ${name}`);
    this.i++;
    if (this.defined.has(name))
      this.fail(`${name} is defined twice (first at ${this.where(this.defined.get(name)!)})`, nameAt);
    this.defined.set(name, nameAt);
    if (terminal) {
      this.curTermRefs = new Set();
      this.termRefs.set(name, this.curTermRefs);
    }
    const body = this.expansions(0, terminal ? "term" : "rule");
    this.curTermRefs = undefined;
    this.rules.set(name, body);
  }

  private directive(): void {
    const at = this.i;
    this.i++;
    const m = this.at(/[a-z_]+/y);
    const word = m?.[0] ?? "";
    this.i += word.length;
    if (word === "ignore") {
      this.skip(false);
      this.curTermRefs = new Set();
      this.ignores.push(this.expansions(0, "term"));
      this.curTermRefs = undefined;
      return;
    }
    if (word === "import") {
      this.importDirective();
      return;
    }
    this.fail(`%${word} is not supported`, at);
  }

  /** `%import common.X`, `%import common.X -> Y`, `%import common (X, Y)`. */
  private importDirective(): void {
    this.skip(false);
    const modAt = this.i;
    const m = this.at(/[_a-zA-Z0-9.]+/y);
    if (!m) this.fail("expected a module after %import");
    this.i += m[0].length;
    const path = m[0].split(".");
    this.skip(false);
    let names: [string, string, number][];
    if (this.s[this.i] === "(") {
      if (path.join(".") !== "common")
        this.fail(`%import from ${path.join(".")} is not supported (only common)`, modAt);
      this.i++;
      names = [];
      for (;;) {
        this.skip(true);
        const at = this.i;
        const n = this.name();
        names.push([n, n, at]);
        this.skip(true);
        if (this.s[this.i] === ",") this.i++;
        else if (this.s[this.i] === ")") {
          this.i++;
          break;
        } else this.fail('expected "," or ")"');
      }
    } else {
      if (path.length !== 2 || path[0] !== "common")
        this.fail(`%import ${m[0]} is not supported (only common.NAME)`, modAt);
      let as = path[1]!;
      if (this.s.startsWith("->", this.i)) {
        this.i += 2;
        this.skip(false);
        as = this.name();
      }
      names = [[path[1]!, as, modAt]];
    }
    for (const [n, as, at] of names) {
      const def = COMMON[n];
      if (!def)
        this.fail(
          `common.${n} is not one of the supported common terminals (${Object.keys(COMMON).join(", ")})`,
          at,
        );
      if (isTerminalName(as) !== isTerminalName(n))
        this.fail(`${as} must be a terminal name (upper case)`, at);
      if (this.defined.has(as)) this.fail(`${as} is defined twice`, at);
      this.defined.set(as, at);
      this.termRefs.set(as, new Set());
      this.rules.set(as, def());
    }
  }

  private expansions(depth: number, ctx: Ctx): Node {
    const alts: Node[] = [this.alternative(depth, ctx)];
    for (;;) {
      if (depth === 0 && (this.s[this.i] === "\n" || this.s[this.i] === "\r") && !this.continues()) break;
      if (this.s[this.i] !== "|") break;
      this.i++;
      alts.push(this.alternative(depth, ctx));
    }
    return alt(...alts);
  }

  private alternative(depth: number, ctx: Ctx): Node {
    const items: Node[] = [];
    for (;;) {
      this.skip(depth > 0);
      const c = this.s[this.i];
      if (c === undefined || c === "|" || c === ")" || c === "]" || c === "\n" || c === "\r") break;
      if (c === "-" && this.s[this.i + 1] === ">") {
        // `-> alias` names the tree node; the alternative ends here.
        this.i += 2;
        this.skip(false);
        this.name();
        this.skip(depth > 0);
        break;
      }
      items.push(this.postfix(this.atom(depth, ctx)));
    }
    return items.length === 0 ? EMPTY : seq(...items);
  }

  private postfix(atom: Node): Node {
    for (;;) {
      const save = this.i;
      this.skip(false);
      const c = this.s[this.i];
      if (c === undefined || !"?*+~{".includes(c)) {
        this.i = save;
        return atom;
      }
      if (c === "?") atom = opt(atom);
      else if (c === "*") atom = star(atom);
      else if (c === "+") atom = plus(atom);
      else if (c === "~") {
        const m = this.at(/~\s*(\d+)(\s*\.\.\s*(\d+))?/y);
        if (!m) this.fail("expected a count after ~");
        atom = this.counted(atom, Number(m[1]), m[3] === undefined ? Number(m[1]) : Number(m[3]));
        this.i += m[0].length - 1;
      } else if (c === "{") {
        const m = this.at(/\{\s*(\d*)\s*(,\s*(\d*)\s*)?\}/y);
        if (!m || (m[1] === "" && m[2] === undefined)) {
          const brace = this.at(/\{[^}\n]{0,20}\}?/y)![0];
          this.fail(`${brace} is not a repetition count {m,n} (templates are not supported)`);
        }
        const min = m[1] === "" ? 0 : Number(m[1]);
        const max = m[2] === undefined ? min : m[3] === "" ? Number.POSITIVE_INFINITY : Number(m[3]);
        atom = this.counted(atom, min, max);
        this.i += m[0].length - 1;
      } else return atom;
      this.i++;
    }
  }

  private counted(atom: Node, min: number, max: number): Node {
    if (min > max) this.fail("repetition count out of order");
    if (min > MAX_REPEAT || (max !== Number.POSITIVE_INFINITY && max > MAX_REPEAT))
      this.fail(`repetition count over ${MAX_REPEAT}`);
    return rep(atom, min, max);
  }

  /** A terminal as a rule uses it: ignored text may come before it. */
  private token(node: Node, ctx: Ctx): Node {
    return ctx === "rule" ? seq(ref(IGNORE), node) : node;
  }

  private atom(depth: number, ctx: Ctx): Node {
    const at = this.i;
    const c = this.s[this.i]!;
    if (c === "(" || c === "[") {
      if (depth >= MAX_DEPTH) this.fail(`( and [ nested deeper than ${MAX_DEPTH}`);
      this.i++;
      this.skip(true);
      const inner = this.expansions(depth + 1, ctx);
      this.skip(true);
      const close = c === "(" ? ")" : "]";
      if (this.s[this.i] !== close) this.fail(`missing ${close}`, at);
      this.i++;
      return c === "(" ? inner : opt(inner);
    }
    if (c === '"' || c === "'") {
      const [text, fold] = this.string();
      const save = this.i;
      this.skip(false);
      if (this.s.startsWith("..", this.i)) {
        this.i += 2;
        this.skip(false);
        const hiAt = this.i;
        if (this.s[this.i] !== '"' && this.s[this.i] !== "'") this.fail('expected a "string" after ..');
        const [hi] = this.string();
        const a = [...text];
        const b = [...hi];
        if (a.length !== 1 || b.length !== 1) this.fail("a range's ends must be one character each", at);
        const lo = a[0]!.codePointAt(0)!;
        const top = b[0]!.codePointAt(0)!;
        if (lo > top) this.fail("range out of order", hiAt);
        return this.token(charClass([[lo, top]]), ctx);
      }
      this.i = save;
      if (!fold) return this.token(lit(text), ctx);
      return this.token(
        seq(...[...text].map((ch) => charClass(caseFold([[ch.codePointAt(0)!, ch.codePointAt(0)!]])))),
        ctx,
      );
    }
    if (c === "/" && this.s[this.i + 1] !== "/") return this.token(this.regex(), ctx);
    if (c === "%") {
      const m = this.at(/%[a-z_]*/y)!;
      this.fail(`${m[0]} is not supported inside a rule`);
    }
    if (/[_a-zA-Z]/.test(c)) {
      const name = this.name();
      if (this.s[this.i] === "{" && !this.at(/\{\s*\d*\s*(,\s*\d*\s*)?\}/y))
        this.fail(`templates (${name}{...}) are not supported`, at);
      if (!this.used.has(name)) this.used.set(name, at);
      if (isTerminalName(name)) {
        this.curTermRefs?.add(name);
        return this.token(ref(name), ctx);
      }
      if (ctx === "term") this.fail(`a terminal cannot use the rule ${name}`, at);
      return ref(name);
    }
    this.fail(`unexpected "${c}"`);
  }

  /** A "string" (or 'string') with Python's escapes; returns its text and whether it has the i flag. */
  private string(): [string, boolean] {
    const at = this.i;
    const q = this.s[this.i]!;
    this.i++;
    let out = "";
    for (;;) {
      const c = this.s[this.i];
      if (c === undefined || c === "\n") this.fail("unterminated string", at);
      if (c === q) break;
      if (c !== "\\") {
        const cp = this.s.codePointAt(this.i)!;
        out += String.fromCodePoint(cp);
        this.i += cp > 0xffff ? 2 : 1;
        continue;
      }
      const e = this.s[this.i + 1];
      this.i += 2;
      const simple: Record<string, string> = {
        n: "\n",
        r: "\r",
        t: "\t",
        f: "\f",
        v: "\v",
        a: "\x07",
        b: "\b",
        "0": "\0",
        "\\": "\\",
        '"': '"',
        "'": "'",
        "/": "/",
      };
      if (e !== undefined && e in simple) {
        out += simple[e];
        continue;
      }
      const len = e === "x" ? 2 : e === "u" ? 4 : e === "U" ? 8 : 0;
      if (len === 0) this.fail(`unknown escape \\${e ?? ""} in a string`, this.i - 2);
      const hex = this.s.slice(this.i, this.i + len);
      if (hex.length !== len || !/^[0-9a-fA-F]+$/.test(hex)) this.fail("bad hex escape", this.i - 2);
      const v = Number.parseInt(hex, 16);
      if (v > MAX_CP || (v >= 0xd800 && v <= 0xdfff)) this.fail("escape out of range", this.i - 2);
      this.i += len;
      out += String.fromCodePoint(v);
    }
    this.i++;
    let fold = false;
    if (this.s[this.i] === "i" && !/[_a-zA-Z0-9]/.test(this.s[this.i + 1] ?? "")) {
      fold = true;
      this.i++;
    }
    if (out === "") this.fail("empty string (Lark refuses it too)", at);
    return [out, fold];
  }

  /** A /regex/flags through regex.ts, read as Python reads it. */
  private regex(): Node {
    const at = this.i;
    this.i++;
    let body = "";
    for (;;) {
      const c = this.s[this.i];
      if (c === undefined || c === "\n") this.fail("unterminated regex", at);
      if (c === "/") break;
      if (c === "\\") {
        const n = this.s[this.i + 1];
        if (n === undefined) this.fail("unterminated regex", at);
        body += n === "/" ? "/" : c + n;
        this.i += 2;
        continue;
      }
      body += c;
      this.i++;
    }
    this.i++;
    const flags = this.at(/[a-zA-Z]*/y)![0];
    this.i += flags.length;
    const opts: RegexOptions = { dot: PY_DOT, noAnchors: true, pythonBraces: true };
    for (const f of flags) {
      if (f === "i") opts.ignoreCase = true;
      else if (f === "s") opts.dot = ANY_CHAR;
      else if (f === "m" || f === "u") {
        // m changes only ^ and $ (refused here); u is Python 3's default for text
      } else if (f === "x" || f === "l")
        this.fail(`the regex flag ${f} (${f === "x" ? "verbose" : "locale"}) is not supported`, at);
      else this.fail(`unknown regex flag ${f}`, at);
    }
    if (body === "") this.fail("empty regex", at);
    try {
      return regexToNode(body, this.field, charClass, opts);
    } catch (err) {
      if (err instanceof GrammarError) this.fail(`${err.reason} in the regex`, at);
      throw err;
    }
  }

  /** `name: name x | name y | a | b` → `(a | b) (x | y)*`: direct left recursion as repetition. */
  private unleft(name: string, body: Node): Node {
    const alts = body.k === "alt" ? body.xs : [body];
    const base: Node[] = [];
    const tails: Node[] = [];
    for (const a of alts) {
      const xs = a.k === "seq" ? a.xs : [a];
      const first = xs[0];
      if (first?.k === "ref" && first.name === name) {
        if (xs.length > 1) tails.push(seq(...xs.slice(1)));
      } else base.push(a);
    }
    if (base.length === alts.length) return body;
    if (base.length === 0)
      this.fail(`rule ${name} is left-recursive with no other alternative`, this.defined.get(name));
    return tails.length === 0 ? alt(...base) : seq(alt(...base), star(alt(...tails)));
  }

  private refuseRecursiveTerminals(): void {
    const state = new Map<string, number>();
    const visit = (t: string) => {
      const st = state.get(t);
      if (st === 2) return;
      if (st === 1)
        this.fail(`terminal ${t} is recursive (terminals must be regular; use a rule)`, this.defined.get(t));
      state.set(t, 1);
      for (const u of this.termRefs.get(t) ?? []) visit(u);
      state.set(t, 2);
    };
    for (const t of this.termRefs.keys()) visit(t);
  }
}
