import { describe, expect, it } from "vitest";
import { type CompiledGrammar, compileGrammar, GrammarError } from "../../src/grammar/index.js";
import { VOCAB_GPT2 } from "../helpers/models.js";
import { loadVocab, randomWalk, rng, takesText } from "./helpers.js";

/**
 * Lark grammars (src/grammar/lark.ts): each grammar's accepted and rejected strings agree with an
 * independent recognizer written here (recursive descent over a longest-match tokenizer, or a
 * RegExp for a regular language), token by token through the matcher; random walks of the Lark
 * automaton are in the language of the same grammar written in GBNF and of the recognizer, and
 * random walks of the GBNF automaton are taken by the Lark grammar; what is not supported is refused
 * with its line and column.
 */

const { tok, vocab } = loadVocab(VOCAB_GPT2);
const lark = (grammar: string) => compileGrammar({ type: "lark", grammar }, vocab);
const gbnf = (grammar: string) => compileGrammar({ type: "gbnf", grammar }, vocab);

/** Whether the grammar takes `text` whole, each token checked against its mask. */
const takes = (g: CompiledGrammar, text: string): boolean => takesText(g, tok, text);

const decoder = new TextDecoder();
/** Texts of random walks through `g` (those that ended). */
function walks(g: CompiledGrammar, n: number, seed: number): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const ids = randomWalk(g.matcher(), vocab, r, 80);
    if (ids === undefined) continue;
    const bytes = ids.flatMap((id) => [...vocab.tokenBytes(id)]);
    out.push(decoder.decode(new Uint8Array(bytes)));
  }
  return out;
}

/** A longest-match tokenizer over `kinds` (tried in order), skipping `skip`; undefined when stuck. */
function tokenize(text: string, kinds: [string, RegExp][], skip: RegExp): [string, string][] | undefined {
  const out: [string, string][] = [];
  let i = 0;
  for (;;) {
    const s = skip.exec(text.slice(i));
    if (s) i += s[0].length;
    if (i >= text.length) return out;
    let best: [string, string] | undefined;
    for (const [kind, re] of kinds) {
      const m = re.exec(text.slice(i));
      if (m && (!best || m[0].length > best[1].length)) best = [kind, m[0]];
    }
    if (!best) return undefined;
    out.push(best);
    i += best[1].length;
  }
}

/** A recursive-descent recognizer over tokens: `parse(p)` consumes from p.i and says whether it matched. */
class Toks {
  i = 0;
  constructor(readonly t: [string, string][]) {}
  is(kind: string): boolean {
    if (this.t[this.i]?.[0] !== kind) return false;
    this.i++;
    return true;
  }
  get done(): boolean {
    return this.i === this.t.length;
  }
}

const NUMBER = /^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/;

// ---- arithmetic: Lark's calculator style (left recursion, ?rules, aliases), %ignore WS_INLINE
const ARITH_LARK = `
?start: sum
?sum: product
    | sum "+" product   -> add
    | sum "-" product   -> sub
?product: atom
    | product "*" atom  -> mul
    | product "/" atom  -> div
?atom: NUMBER           -> number
     | "-" atom         -> neg
     | "(" sum ")"

%import common.NUMBER
%import common.WS_INLINE
%ignore WS_INLINE
`;
const ARITH_GBNF = `
root ::= ws sum ws
sum ::= product (ws [+-] ws product)*
product ::= atom (ws [*/] ws atom)*
atom ::= number | "-" ws atom | "(" ws sum ws ")"
number ::= ([0-9]+ ("." [0-9]*)? | "." [0-9]+) ([eE] [+-]? [0-9]+)?
ws ::= [ \\t]*
`;
function arithOracle(text: string): boolean {
  const t = tokenize(
    text,
    [
      ["num", NUMBER],
      ["op", /^[-+*/()]/],
    ],
    /^[ \t]+/,
  );
  if (!t) return false;
  const p = new Toks(t.map(([k, v]) => (k === "op" ? [v, v] : [k, v])));
  const sum = (): boolean => {
    if (!product()) return false;
    while (p.is("+") || p.is("-")) if (!product()) return false;
    return true;
  };
  const product = (): boolean => {
    if (!atom()) return false;
    while (p.is("*") || p.is("/")) if (!atom()) return false;
    return true;
  };
  const atom = (): boolean => p.is("num") || (p.is("-") && atom()) || (p.is("(") && sum() && p.is(")"));
  return sum() && p.done;
}
const ARITH_STRINGS = [
  "1",
  "1+2*3",
  " (1 + 2) *\t3 ",
  "-(-4.5e3)/ .5",
  "10/(2-3)*7",
  "1.",
  "1+",
  "(1",
  "1)",
  "+1",
  "1**2",
  "1 2",
  "a",
  "1\n+2",
  "()",
  "",
];

// ---- JSON in Lark (vLLM's documentation example, with whitespace ignored)
const JSON_LARK = `
?start: value
?value: object
      | array
      | string
      | SIGNED_NUMBER      -> number
      | "true"             -> true
      | "false"            -> false
      | "null"             -> null
array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
`;
function jsonOracle(text: string): boolean {
  const t = tokenize(
    text,
    [
      ["str", /^"([^"\\\n]|\\[^\n])*"/],
      ["num", /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/],
      ["lit", /^(true|false|null)/],
      ["p", /^[[\]{}:,]/],
    ],
    /^[ \t\f\r\n]+/,
  );
  if (!t) return false;
  const p = new Toks(t.map(([k, v]) => (k === "p" ? [v, v] : [k, v])));
  const value = (): boolean => {
    if (p.is("str") || p.is("num") || p.is("lit")) return true;
    if (p.is("[")) {
      if (p.is("]")) return true;
      do if (!value()) return false;
      while (p.is(","));
      return p.is("]");
    }
    if (p.is("{")) {
      if (p.is("}")) return true;
      do if (!(p.is("str") && p.is(":") && value())) return false;
      while (p.is(","));
      return p.is("}");
    }
    return false;
  };
  return value() && p.done;
}
const JSON_STRINGS = [
  '{"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "d\\"e"}}',
  "[]",
  " { } ",
  '"x"',
  "-0.5",
  '[\n  {"k": "v"},\n  [[]]\n]',
  '{"a":}',
  "[1,]",
  '{"a" 1}',
  "tru",
  '"abc',
  "[1 2]",
  '{"a":1,,"b":2}',
  "{a:1}",
  "",
];

// ---- a SQL-ish SELECT (case-insensitive keywords, a regex terminal, several %import forms)
const SQL_LARK = `
start: "select"i columns "from"i NAME [where] [";"]
columns: "*" | NAME ("," NAME)*
where: "where"i cond (("and"i | "or"i) cond)*
cond: NAME OP value
OP: "=" | "<" | ">" | "<=" | ">=" | "!="
?value: NAME | INT | STRING
STRING: /'[^']*'/
NAME: CNAME
%import common (CNAME, INT)
%import common.WS -> BLANK
%ignore BLANK
`;
const SQL_RE = (() => {
  const ws = "[ \\t\\f\\r\\n]*";
  const name = "[A-Za-z_][A-Za-z0-9_]*";
  const value = `(?:${name}|[0-9]+|'[^']*')`;
  const cond = `${name}${ws}(?:=|<|>|<=|>=|!=)${ws}${value}`;
  // keywords case-insensitive as Python folds them (ſ is an s, K the Kelvin sign a k), names ASCII
  const kw = (w: string) => `(?i:${w})`;
  return new RegExp(
    `^${ws}${kw("select")}${ws}(?:\\*|${name}(?:${ws},${ws}${name})*)${ws}${kw("from")}${ws}${name}` +
      `(?:${ws}${kw("where")}${ws}${cond}(?:${ws}(?:${kw("and")}|${kw("or")})${ws}${cond})*)?(?:${ws};)?${ws}$`,
    "u",
  );
})();
const SQL_STRINGS = [
  "SELECT * FROM users",
  "select id, name from users where age >= 18 and name != 'bob';",
  "Select a From t Where x='y' OR z<3",
  "  SELECT\n*\nFROM t ; ",
  "SELECT FROM users",
  "SELECT * users",
  "SELECT * FROM users WHERE",
  "SELECT * FROM users WHERE a == 1",
  "SELECT *, a FROM t",
  "DELETE FROM t",
  "SELECT * FROM t;;",
];

// ---- key=value lines, whitespace (newlines included) ignored
const KV_LARK = `
start: pair*
pair: KEY "=" VALUE
KEY: /[a-z_]+/
VALUE: /[0-9]+/ | ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.WS
%ignore WS
`;
const KV_GBNF = `
root ::= ws (pair ws)*
pair ::= [a-z_]+ ws "=" ws value
value ::= [0-9]+ | "\\"" ([^"\\\\\\n] | "\\\\" [^\\n])* "\\""
ws ::= [ \\t\\n\\x0c\\r]*
`;
const KV_RE =
  /^[ \t\f\r\n]*(?:[a-z_]+[ \t\f\r\n]*=[ \t\f\r\n]*(?:[0-9]+|"(?:[^"\\\n]|\\[^\n])*")[ \t\f\r\n]*)*$/;
const KV_STRINGS = [
  "a=1\nb=2\n",
  'name = "x y"\n  port=8080',
  "",
  "\n\n",
  "a=1b=2",
  'a="q\\"uote"',
  "a=",
  "=1",
  "A=1",
  "a=1 2",
  'a="unterminated',
  "a=1\n=2",
];

describe("Lark grammars take their language (independent recognizers)", () => {
  const cases: [string, string, (s: string) => boolean, string[]][] = [
    ["arithmetic", ARITH_LARK, arithOracle, ARITH_STRINGS],
    ["JSON", JSON_LARK, jsonOracle, JSON_STRINGS],
    ["SQL-ish SELECT", SQL_LARK, (s) => SQL_RE.test(s), SQL_STRINGS],
    ["key=value lines", KV_LARK, (s) => KV_RE.test(s), KV_STRINGS],
  ];
  for (const [name, grammar, oracle, strings] of cases) {
    it(`${name}: accepts and rejects as the recognizer does, and its random walks are in the language`, () => {
      const g = lark(grammar);
      let accepted = 0;
      for (const s of strings) {
        const want = oracle(s);
        if (want) accepted++;
        const got = s === "" ? g.matcher().canEnd() : takes(g, s);
        expect(got, `${name} on ${JSON.stringify(s)}`).toBe(want);
      }
      expect(accepted).toBeGreaterThanOrEqual(3);
      expect(strings.length - accepted).toBeGreaterThanOrEqual(3);
      const texts = walks(g, 25, 7);
      expect(texts.length).toBeGreaterThan(10);
      for (const t of texts) expect(oracle(t), `${name} walk ${JSON.stringify(t)}`).toBe(true);
    });
  }
});

describe("Lark and GBNF agree on the same language", () => {
  const pairs: [string, string, string, string[]][] = [
    ["arithmetic", ARITH_LARK, ARITH_GBNF, ARITH_STRINGS],
    ["key=value lines", KV_LARK, KV_GBNF, KV_STRINGS],
  ];
  for (const [name, l, b, strings] of pairs) {
    it(`${name}: same accept/reject, and each takes the other's random walks`, () => {
      const gl = lark(l);
      const gb = gbnf(b);
      for (const s of strings) {
        const a = s === "" ? gl.matcher().canEnd() : takes(gl, s);
        const c = s === "" ? gb.matcher().canEnd() : takes(gb, s);
        expect(a, `${name} on ${JSON.stringify(s)}`).toBe(c);
      }
      const fromLark = walks(gl, 20, 11);
      const fromGbnf = walks(gb, 20, 13);
      expect(fromLark.length + fromGbnf.length).toBeGreaterThan(20);
      for (const t of fromLark)
        expect(t === "" || takes(gb, t), `GBNF takes ${JSON.stringify(t)}`).toBe(true);
      for (const t of fromGbnf)
        expect(t === "" || takes(gl, t), `Lark takes ${JSON.stringify(t)}`).toBe(true);
    });
  }
});

describe("Lark syntax", () => {
  it("strings with escapes and the i flag, ranges, regex flags, ~ counts, [ ] and ? optional, quoted names", () => {
    const g = lark(`
start: greeting " " NAME "!"~1..3 [TAIL] code?
greeting: "hello"i | "\\u00e9t\\xe9" | 'hi'
NAME: ("a".."z")~2 LETTERS{0,3}
LETTERS: /[a-z]/
TAIL: /x.y/s
code: /[a-f]+/i
`);
    for (const s of ["hello ab!", "HeLLo abcde!!!", "été zz!x\ny", "hi ab!AbC", "hi ab!x-yfF"])
      expect(takes(g, s), s).toBe(true);
    for (const s of ["hello a!", "hello abcdef!", "hello ab!!!!", "hey ab!", "hi ab!g", "hi AB!"])
      expect(takes(g, s), s).toBe(false);
  });

  it("a regex's i flag folds classes before negating them, as Python does", () => {
    const g = lark("start: /[^a]b/i");
    for (const s of ["cb", "cB", "xb"]) expect(takes(g, s), s).toBe(true);
    for (const s of ["ab", "Ab", "AB"]) expect(takes(g, s), s).toBe(false);
  });

  it("Python's `.` (no newline) and `{,n}`", () => {
    const g = lark("start: /.{,2}z/");
    for (const s of ["z", "\rz", "abz"]) expect(takes(g, s), JSON.stringify(s)).toBe(true);
    for (const s of ["\nz", "abcz"]) expect(takes(g, s), JSON.stringify(s)).toBe(false);
  });

  it("the common terminals", () => {
    const cases: [string, string[], string[]][] = [
      ["INT", ["0", "123"], ["-1", "1.0", ""]],
      ["SIGNED_INT", ["-1", "+2", "3"], ["--1", "1e2"]],
      ["DECIMAL", ["1.5", "1.", ".5"], ["1", "."]],
      ["FLOAT", ["1e5", "1.5", "1.5E-3", ".5e+2"], ["1", "e5"]],
      ["NUMBER", ["1", "1.5", "2e3"], ["-1", "1e"]],
      ["SIGNED_NUMBER", ["-1", "+1.5", "2e3"], ["+-1"]],
      ["ESCAPED_STRING", ['""', '"a\\"b"', '"\\\\"', '"tab\there"'], ['"a', '"a\\"', '"a\nb"', 'a"']],
      ["CNAME", ["_x1", "abc", "A"], ["1a", "a-b"]],
      ["WORD", ["Hello"], ["a1", ""]],
      ["LETTER", ["x", "Q"], ["1", "xy"]],
      ["DIGIT", ["7"], ["77"]],
      ["HEXDIGIT", ["f", "A", "9"], ["g"]],
      ["LCASE_LETTER", ["a"], ["A"]],
      ["UCASE_LETTER", ["A"], ["a"]],
      ["WS", [" \t\n\r\f"], [""]],
      ["WS_INLINE", [" \t "], ["\n"]],
      ["NEWLINE", ["\n", "\r\n\n"], ["\r", " "]],
    ];
    for (const [name, yes, no] of cases) {
      const g = lark(`start: ${name}\n%import common.${name}`);
      for (const s of yes) expect(takes(g, s), `${name} ${JSON.stringify(s)}`).toBe(true);
      for (const s of no)
        expect(s === "" ? g.matcher().canEnd() : takes(g, s), `${name} ${JSON.stringify(s)}`).toBe(false);
    }
  });

  it("%ignore puts ignored text before every terminal and after the last, never inside one", () => {
    const g = lark('start: "a" WORD "b"\nWORD: "x" "y"\n%ignore " "');
    for (const s of ["axyb", " a xy b ", "  axy  b"]) expect(takes(g, s), s).toBe(true);
    expect(takes(g, "ax yb")).toBe(false);
  });

  it("comments (// and #), priorities, aliases, ! and ? prefixes, continuation lines, CRLF", () => {
    const g = lark(
      '// a comment\r\n!start.2: a   # another\r\n     | b -> bee\r\n?a: "x" // trailing\r\nb: B\r\nB.3: "y"\r\n',
    );
    for (const s of ["x", "y"]) expect(takes(g, s), s).toBe(true);
    expect(takes(g, "z")).toBe(false);
  });
});

describe("Lark: what is not supported is refused by name, with its position", () => {
  const cases: [string, RegExp][] = [
    ['start: "a"\n%declare X', /%declare is not supported \(line 2, column 1\)/],
    ['start: "a"\n%override start: "b"', /%override is not supported/],
    ['start: "a"\n%extend start: "b"', /%extend is not supported/],
    ['start: sep{"a", ","}\nsep{x, s}: x (s x)*', /templates .*not supported \(line 1, column 8\)/],
    ['_sep{x, s}: x (s x)*\nstart: "a"', /templates \(_sep\{\.\.\.\}\) are not supported \(line 1/],
    ["start: /(?=a)a/", /look-around.* in the regex \(line 1, column 8\)/],
    ["start: /a/x", /regex flag x \(verbose\) is not supported/],
    ["start: /a/l", /regex flag l \(locale\) is not supported/],
    ["start: /^a$/", /anchors .* not supported/],
    ["start: /a\\bb/", /word boundaries/],
    [
      "start: X\n%import common.C_COMMENT -> X",
      /common.C_COMMENT is not one of the supported common terminals/,
    ],
    ["start: X\n%import python.NAME -> X", /%import python.NAME is not supported/],
    ['rule: "a"', /no rule named start/],
    ["start: missing", /rule missing is used but not defined \(line 1, column 8\)/],
    ["start: MISSING", /terminal MISSING is used but not defined/],
    ['start: "a"\nstart: "b"', /start is defined twice/],
    ["start: A\nA: B\nB: A", /terminal [AB] is recursive/],
    ['start: A\nA: "x" a\na: "y"', /a terminal cannot use the rule a/],
    ['start: "a"~3..1', /repetition count out of order/],
    ['start: "a"~2000', /repetition count over 1000/],
    ['start: ("a"', /missing \)/],
    ['start: "abc', /unterminated string/],
    ['start: "\\q"', /unknown escape \\q/],
    ['start: "ab".."z"', /range's ends must be one character/],
    ['start: "z".."a"', /range out of order/],
    ["start: start", /left-recursive with no other alternative/],
    ['start: a\na: b "x" | "y"\nb: a "z"', /left-recursive/],
    ['start: ""', /empty string/],
    ['start: "a" %json {}', /%json is not supported inside a rule/],
    ['?START: "a"\nstart: START', /cannot take a \? or ! prefix/],
    [`start: ${"(".repeat(5000)}"a"${")".repeat(5000)}`, /nested deeper than 100 \(line 1, column 108\)/],
  ];
  for (const [grammar, message] of cases) {
    it(JSON.stringify(grammar), () => {
      let err: unknown;
      try {
        lark(grammar);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(GrammarError);
      expect((err as GrammarError).field).toBe("grammar");
      expect((err as GrammarError).reason).toMatch(message);
    });
  }
});
