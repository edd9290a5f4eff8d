/**
 * Constrained decoding: compileGrammar turns a GrammarSpec into a CompiledGrammar for one
 * vocabulary (front ends → grammar IR → pushdown automaton of byte DFAs, matched over the
 * vocabulary's token trie); GrammarCache compiles each distinct spec once. The boundary types
 * are in constraint.ts.
 */
import { type Automaton, buildAutomaton, type CompileLimits } from "./automaton.js";
import { type CompiledGrammar, GrammarError, type GrammarSpec, type GrammarVocab } from "./constraint.js";
import { gbnfGrammar } from "./gbnf.js";
import { alt, type Grammar, lit, type Node, ref, rep, seq } from "./ir.js";
import { jsonObjectGrammar, jsonSchemaGrammar } from "./json-schema.js";
import { larkGrammar } from "./lark.js";
import { Compiled } from "./matcher.js";
import { regexToNode } from "./regex.js";
import { vocabIndex } from "./token-trie.js";

export type { CompileLimits } from "./automaton.js";
export * from "./constraint.js";

/** Longest grammar source (regex, GBNF, Lark, a choice's strings together) accepted, in characters. */
const MAX_SOURCE = 256 * 1024;

/** The grammar IR of a spec; throws GrammarError naming the spec's field at fault. */
export function specGrammar(spec: GrammarSpec): { grammar: Grammar; field: string } {
  if (typeof spec !== "object" || spec === null) throw new GrammarError("grammar", "must be an object");
  const checkSource = (s: unknown, field: string): string => {
    if (typeof s !== "string") throw new GrammarError(field, "must be a string");
    if (s.length > MAX_SOURCE) throw new GrammarError(field, `longer than ${MAX_SOURCE} characters`);
    return s;
  };
  switch (spec.type) {
    case "json_object":
      return { grammar: jsonObjectGrammar(), field: "json_object" };
    case "json_schema": {
      if (JSON.stringify(spec.schema ?? null).length > MAX_SOURCE)
        throw new GrammarError("schema", `longer than ${MAX_SOURCE} characters`);
      return { grammar: jsonSchemaGrammar(spec.schema, "schema"), field: "schema" };
    }
    case "regex": {
      const pattern = checkSource(spec.pattern, "regex");
      return {
        grammar: { rules: new Map([["root", regexToNode(pattern, "regex")]]), start: "root" },
        field: "regex",
      };
    }
    case "choice": {
      if (!Array.isArray(spec.choices) || spec.choices.length === 0)
        throw new GrammarError("choice", "must be a non-empty array of strings");
      let total = 0;
      spec.choices.forEach((c, i) => {
        total += checkSource(c, `choice[${i}]`).length;
      });
      if (total > MAX_SOURCE) throw new GrammarError("choice", `longer than ${MAX_SOURCE} characters in all`);
      return {
        grammar: { rules: new Map([["root", alt(...spec.choices.map((c) => lit(c)))]]), start: "root" },
        field: "choice",
      };
    }
    case "gbnf":
      return { grammar: gbnfGrammar(checkSource(spec.grammar, "grammar"), "grammar"), field: "grammar" };
    case "lark":
      return { grammar: larkGrammar(checkSource(spec.grammar, "grammar"), "grammar"), field: "grammar" };
    case "triggered":
      return triggeredGrammar(spec, checkSource);
  }
  throw new GrammarError(
    "grammar",
    `unknown grammar type ${JSON.stringify((spec as { type?: unknown }).type)}`,
  );
}

/** The start rule of a triggered grammar (a name no front end gives a rule). */
const TRIGGERED = "%triggered";
/** JSON whitespace, a few bytes of which may surround a triggered segment's JSON. */
const SEGMENT_WS = rep(
  {
    k: "bytes",
    ranges: [
      [0x09, 0x0a],
      [0x0d, 0x0d],
      [0x20, 0x20],
    ],
  },
  0,
  4,
);

/** Free text, then segments of `trigger` JSON `end` each followed by free text (see GrammarSpec). */
function triggeredGrammar(
  spec: Extract<GrammarSpec, { type: "triggered" }>,
  checkSource: (s: unknown, field: string) => string,
): { grammar: Grammar; field: string } {
  const trigger = checkSource(spec.trigger, "trigger");
  const end = checkSource(spec.end, "end");
  if (trigger.length === 0) throw new GrammarError("trigger", "must not be empty");
  const max = spec.maxSegments ?? Number.POSITIVE_INFINITY;
  if (!(max >= 0)) throw new GrammarError("maxSegments", "must be a number of segments, 0 or more");
  if (JSON.stringify(spec.schema ?? null).length > MAX_SOURCE)
    throw new GrammarError("schema", `longer than ${MAX_SOURCE} characters`);
  const inner = jsonSchemaGrammar(spec.schema, "schema");
  const text: Node = { k: "avoid", text: new TextEncoder().encode(trigger) };
  const segment = seq(lit(trigger), SEGMENT_WS, ref(inner.start), SEGMENT_WS, lit(end), text);
  inner.rules.set(TRIGGERED, seq(text, rep(segment, 0, max)));
  return { grammar: { rules: inner.rules, start: TRIGGERED }, field: "schema" };
}

/** The automaton of a spec (vocabulary-independent). */
export function specAutomaton(spec: GrammarSpec, limits?: CompileLimits): Automaton {
  const { grammar, field } = specGrammar(spec);
  return buildAutomaton(grammar, field, limits);
}

/**
 * Compiles `spec` against `vocab`. Throws GrammarError (field and reason) for input that is
 * invalid, unsupported, or over the limits (size, and a compile-time budget of
 * `limits.timeoutMs`, default 500 ms). Masks are computed lazily and cached per parse position.
 */
export function compileGrammar(
  spec: GrammarSpec,
  vocab: GrammarVocab,
  limits?: CompileLimits,
): CompiledGrammar {
  return new Compiled(specAutomaton(spec, limits), vocabIndex(vocab), vocab);
}

/** The content key of a spec: canonical JSON (object keys sorted). */
export function specKey(spec: GrammarSpec): string {
  const canon = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(canon);
    if (typeof v === "object" && v !== null)
      return Object.fromEntries(
        Object.keys(v)
          .sort()
          .map((k) => [k, canon((v as Record<string, unknown>)[k])]),
      );
    return v;
  };
  // Property order is meaningful in a schema (it is the output order), so keep it: sort only the
  // spec's own keys, and keep the schema's objects as written.
  if (spec.type === "json_schema") return JSON.stringify({ schema: spec.schema, type: spec.type });
  if (spec.type === "triggered") {
    const { end, maxSegments, schema, trigger, type } = spec;
    return JSON.stringify({ end, maxSegments, schema, trigger, type });
  }
  return JSON.stringify(canon(spec));
}

/**
 * Compiled grammars for one vocabulary, keyed by content, least recently used first out. Errors
 * are cached too (a bad spec sent again fails at once).
 */
export class GrammarCache {
  private readonly map = new Map<string, CompiledGrammar | GrammarError>();
  constructor(
    readonly vocab: GrammarVocab,
    readonly capacity = 32,
    readonly limits?: CompileLimits,
  ) {}

  get(spec: GrammarSpec): CompiledGrammar {
    const key = specKey(spec);
    let v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    } else {
      try {
        v = compileGrammar(spec, this.vocab, this.limits);
      } catch (err) {
        if (!(err instanceof GrammarError)) throw err;
        v = err;
      }
      this.map.set(key, v);
      if (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value!);
    }
    if (v instanceof GrammarError) throw v;
    return v;
  }

  get size(): number {
    return this.map.size;
  }
}
