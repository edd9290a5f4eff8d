import { describe, expect, it } from "vitest";
import { tokenizeForBench } from "../../src/bench/grammar-bench.js";
import {
  type CompiledGrammar,
  compileGrammar,
  GrammarCache,
  GrammarError,
  type GrammarSpec,
  maskWords,
} from "../../src/grammar/index.js";
import { runCli } from "../helpers/cli.js";
import { testModel, VOCAB_GPT2, VOCAB_SPM } from "../helpers/models.js";
import { bit, loadVocab, SCHEMA_DIR, takesText } from "./helpers.js";

const { tok, vocab } = loadVocab(VOCAB_GPT2);
const mask = new Uint32Array(maskWords(vocab.vocabSize));

/** Whether the grammar takes `text` (as the tokenizer writes it) whole, each token checked against its mask. */
const takes = (g: CompiledGrammar, text: string, t = tok): boolean => takesText(g, t, text);

describe("regular expressions", () => {
  // JavaScript's own RegExp (whole match, u flag) is the oracle.
  const cases: [string, string[]][] = [
    ["[a-z]+@[a-z]+\\.(com|org)", ["bob@x.com", "a@b.org", "bob@x.net", "Bob@x.com", "@x.com", "bob@x.comm"]],
    ["\\d{3}-\\d{4}", ["555-1234", "55-1234", "5555-1234", "abc-defg", "555-12345"]],
    ["(yes|no|maybe)!?", ["yes", "no!", "maybe", "may", "yes!!", "nope"]],
    ["[^\\s]{2,5}", ["ab", "abcde", "a", "abcdef", "a b", "日本語"]],
    ["(?:ab)*c?", ["", "ab", "ababc", "c", "abc", "aba", "cc"]],
    ["\\p?", []],
    ["[A-F0-9]{2}(:[A-F0-9]{2}){2}", ["0A:1B:2C", "0a:1B:2C", "0A:1B", "0A-1B-2C"]],
    ["é+[ñ-ü]", ["éñ", "ééü", "e", "éa", "éÿ"]],
  ];
  for (const [pattern, strings] of cases) {
    if (pattern === "\\p?") continue;
    it(`/${pattern}/ agrees with RegExp`, () => {
      const g = compileGrammar({ type: "regex", pattern }, vocab);
      const re = new RegExp(`^(?:${pattern})$`, "u");
      for (const s of strings) {
        if (s === "") expect(g.matcher().canEnd()).toBe(re.test(s));
        else expect(takes(g, s), `${pattern} on ${JSON.stringify(s)}`).toBe(re.test(s));
      }
    });
  }

  it("refuses what is not regular or not understood, naming the field", () => {
    for (const pattern of [
      "(a)\\1",
      "(?=a)b",
      "\\bword",
      "a{2001}",
      "(unclosed",
      "[z-a]",
      "*a",
      "\\p{L}",
      `${"(".repeat(100_000)}a${")".repeat(100_000)}`,
    ]) {
      expect(() => compileGrammar({ type: "regex", pattern }, vocab), pattern).toThrow(GrammarError);
      try {
        compileGrammar({ type: "regex", pattern }, vocab);
      } catch (err) {
        expect((err as GrammarError).field).toBe("regex");
      }
    }
  });

  it("a run of any plain bytes followed by a narrower class: the mask equals accepting each token", () => {
    // After the two-byte run only letters may follow, so short plain tokens longer than the run
    // (" abc" no, "abcd" yes) must be walked, not taken from or left out by the plain-token mask.
    for (const pattern of [".{2}[a-z]+", ".[0-9]+"]) {
      const g = compileGrammar({ type: "regex", pattern }, vocab);
      const m = g.matcher();
      m.fillMask(mask);
      let allowed = 0;
      for (let t = 0; t < vocab.vocabSize; t++) {
        const ok = m.clone().accept(t);
        if (ok) allowed++;
        expect(bit(mask, t), `/${pattern}/ token ${t}`).toBe(ok);
      }
      expect(allowed).toBeGreaterThan(100);
    }
  });

  it("a pathological regex fails with a GrammarError (limits), not a stuck compile", () => {
    const spec: GrammarSpec = { type: "regex", pattern: "((a{1,1000}){1,1000}){1,1000}" };
    expect(() => compileGrammar(spec, vocab)).toThrow(GrammarError);
    expect(() => compileGrammar(spec, vocab)).toThrow(/too large|longer than/);
  });
});

describe("choice", () => {
  it("takes exactly one of the strings", () => {
    const g = compileGrammar({ type: "choice", choices: ["red", "green", "blue", "blue-green"] }, vocab);
    for (const s of ["red", "green", "blue", "blue-green"]) expect(takes(g, s), s).toBe(true);
    for (const s of ["re", "yellow", "blue-", "redd"]) expect(takes(g, s), s).toBe(false);
    const m = g.matcher();
    for (const t of tok.encode("blue", { addSpecial: false })) m.accept(t);
    expect(m.canEnd()).toBe(true);
    expect(m.isTerminated()).toBe(false); // "-green" may follow
  });
  it("refuses an empty list", () => {
    expect(() => compileGrammar({ type: "choice", choices: [] }, vocab)).toThrow(GrammarError);
  });
});

describe("GBNF", () => {
  const arithmetic = `
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"   # recursion through parentheses
`;
  it("parses llama.cpp's syntax and takes its language (recursion included)", () => {
    const g = compileGrammar({ type: "gbnf", grammar: arithmetic }, vocab);
    for (const s of ["1", "1+2*3", "(1+2)*3", "((4))", "10/(2-3)*7"]) expect(takes(g, s), s).toBe(true);
    for (const s of ["1+", "(1", "1)", "+1", "1**2", "a"]) expect(takes(g, s), s).toBe(false);
  });
  it("handles classes, escapes, repetition counts and comments", () => {
    const g = compileGrammar(
      { type: "gbnf", grammar: 'root ::= "\\"" [^"\\n]{1,3} "\\"" ws\nws ::= [ \\t]?' },
      vocab,
    );
    for (const s of ['"a"', '"abc" ', '"é"\t']) expect(takes(g, s), s).toBe(true);
    for (const s of ['""', '"abcd"', '"a"  ']) expect(takes(g, s), s).toBe(false);
  });
  it("works with a SentencePiece vocabulary too", () => {
    const spm = loadVocab(VOCAB_SPM);
    const g = compileGrammar({ type: "gbnf", grammar: arithmetic }, spm.vocab);
    const m2 = new Uint32Array(maskWords(spm.vocab.vocabSize));
    const m = g.matcher();
    for (const id of tokenizeForBench(spm.tok, "(1+2)*3")) {
      m.fillMask(m2);
      expect(bit(m2, id)).toBe(true);
      expect(m.accept(id)).toBe(true);
    }
    expect(m.canEnd()).toBe(true);
  });
  it("refuses undefined rules, left recursion and syntax errors", () => {
    const bad = [
      "root ::= missing",
      'root ::= root "a" | "b"',
      'root ::= a\na ::= b "x"\nb ::= a | "y"',
      'root ::= ("a"',
      'expr ::= "a"',
      `root ::= ${"(".repeat(100_000)}"a"${")".repeat(100_000)}`, // a GrammarError, not a stack overflow
    ];
    for (const grammar of bad) {
      expect(() => compileGrammar({ type: "gbnf", grammar }, vocab), grammar).toThrow(GrammarError);
    }
  });
});

describe("JSON object and schema errors", () => {
  it("json_object takes any compact JSON object and nothing else", () => {
    const g = compileGrammar({ type: "json_object" }, vocab);
    for (const v of [{}, { a: [1, { b: null }], "c\n": '\u00e9"' }, { x: -0.5e-7 }])
      expect(takes(g, JSON.stringify(v))).toBe(true);
    for (const s of ["[]", '"s"', "{", '{"a":1,}', '{"a" :1}', "1"]) expect(takes(g, s), s).toBe(false);
  });

  it("names the field at fault", () => {
    const cases: [unknown, string][] = [
      [{ type: "object", properties: { x: { type: "string", foo: 1 } } }, "schema.properties.x.foo"],
      [{ type: "strin" }, "schema.type"],
      [{ type: "string", format: "hostname" }, "schema.format"],
      [{ $ref: "#/$defs/nope" }, "schema.$ref"],
      [{ $ref: "https://example.com/s.json" }, "schema.$ref"],
      [{ type: "integer", minimum: 5, maximum: 1 }, "schema"],
      [{ type: "array", minItems: 3, maxItems: 2 }, "schema.minItems"],
      [{ type: "string", pattern: "(a" }, "schema.pattern"],
      [{ anyOf: [] }, "schema.anyOf"],
      [{ not: { type: "string" } }, "schema.not"],
    ];
    for (const [schema, field] of cases) {
      try {
        compileGrammar({ type: "json_schema", schema }, vocab);
        expect.unreachable(JSON.stringify(schema));
      } catch (err) {
        expect(err, JSON.stringify(schema)).toBeInstanceOf(GrammarError);
        expect((err as GrammarError).field, JSON.stringify(schema)).toBe(field);
      }
    }
  });

  it("a huge schema fails with a GrammarError (limits)", () => {
    const big = { type: "array", minItems: 9000, items: { type: "string", minLength: 900 } };
    expect(() => compileGrammar({ type: "json_schema", schema: big }, vocab)).toThrow(GrammarError);
  });

  it("numeric bounds are exact for integer bounds", () => {
    const g = compileGrammar(
      { type: "json_schema", schema: { type: "number", exclusiveMinimum: -2, maximum: 10 } },
      vocab,
    );
    for (const s of ["-1.99", "0", "10", "10.0", "-1", "3.25"]) expect(takes(g, s), s).toBe(true);
    for (const s of ["-2", "-2.0", "10.01", "11", "-0", "1e3"]) expect(takes(g, s), s).toBe(false);
  });
});

describe("GrammarCache", () => {
  it("compiles each distinct spec once, keeps at most its capacity, and caches errors", () => {
    const cache = new GrammarCache(vocab, 2);
    const a = cache.get({ type: "regex", pattern: "a+" });
    expect(cache.get({ pattern: "a+", type: "regex" } as GrammarSpec)).toBe(a);
    cache.get({ type: "regex", pattern: "b+" });
    cache.get({ type: "regex", pattern: "a+" }); // a is now the most recent
    cache.get({ type: "regex", pattern: "c+" }); // evicts b
    expect(cache.size).toBe(2);
    expect(cache.get({ type: "regex", pattern: "a+" })).toBe(a);
    expect(() => cache.get({ type: "regex", pattern: "(" })).toThrow(GrammarError);
    expect(() => cache.get({ type: "regex", pattern: "(" })).toThrow(GrammarError);
    // property order is part of a schema (it is the output order)
    const s1 = cache.get({ type: "json_schema", schema: { properties: { a: {}, b: {} } } });
    const s2 = cache.get({ type: "json_schema", schema: { properties: { b: {}, a: {} } } });
    expect(s1).not.toBe(s2);
  });
});

describe("spindle bench-grammar", () => {
  it("prints the report as JSON with MaskBench's fields", async () => {
    const r = await runCli([
      "bench-grammar",
      "--data",
      SCHEMA_DIR,
      "--vocab",
      testModel(VOCAB_GPT2),
      "--json",
    ]);
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.stdout);
    for (const k of [
      "schemas",
      "passing",
      "compile_errors",
      "validation_errors",
      "invalidation_errors",
      "timeouts",
    ])
      expect(typeof rep[k]).toBe("number");
    for (const k of ["mask_us", "compile_ms"])
      for (const p of ["p50", "p75", "p90", "p99", "max"]) expect(typeof rep[k][p]).toBe("number");
    expect(rep.schemas).toBeGreaterThanOrEqual(30);
    expect(rep.invalidation_errors).toBe(0);
    expect(rep.validation_errors).toBe(0);
    expect(rep.compile_errors).toBe(3); // the three files of unsupported keywords
  });
  it("has --help", async () => {
    const r = await runCli(["bench-grammar", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("--data DIR");
  });
});

describe("Lark", () => {
  // The front end's own tests are in lark.test.ts; here it is one spec type among the others.
  it("compiles through compileGrammar and the cache, errors naming the field", () => {
    const cache = new GrammarCache(vocab, 4);
    const g = cache.get({ type: "lark", grammar: 'start: ("a" | "b")+ "!"' });
    expect(takes(g, "abba!")).toBe(true);
    expect(takes(g, "abc!")).toBe(false);
    expect(() => cache.get({ type: "lark", grammar: "start: (" })).toThrow(GrammarError);
    try {
      cache.get({ type: "lark", grammar: "start: %declare" });
    } catch (err) {
      expect((err as GrammarError).field).toBe("grammar");
    }
  });
});
