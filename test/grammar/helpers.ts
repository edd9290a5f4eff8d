import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { expect } from "vitest";
import { tokenizeForBench } from "../../src/bench/grammar-bench.js";
import { readGGUF } from "../../src/gguf/reader.js";
import {
  type CompiledGrammar,
  type GrammarMatcher,
  type GrammarVocab,
  grammarVocab,
  maskWords,
} from "../../src/grammar/index.js";
import { type Tokenizer, tokenizerFromGGUF } from "../../src/tokenizer/index.js";
import { testModel } from "../helpers/models.js";
import { rng } from "../helpers/rng.js";

export { rng };

export interface Vocab {
  name: string;
  tok: Tokenizer;
  vocab: GrammarVocab;
}

const cache = new Map<string, Vocab>();
export function loadVocab(name: string): Vocab {
  let v = cache.get(name);
  if (!v) {
    const tok = tokenizerFromGGUF(readGGUF(testModel(name)));
    v = { name, tok, vocab: grammarVocab(tok) };
    cache.set(name, v);
  }
  return v;
}

export const SCHEMA_DIR = join(import.meta.dirname, "../../bench/grammar-schemas");

export interface SchemaFile {
  file: string;
  schema: unknown;
  tests: { description: string; data: unknown; valid: boolean }[];
}
export function schemaFiles(): SchemaFile[] {
  return readdirSync(SCHEMA_DIR)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((file) => ({ file, ...JSON.parse(readFileSync(join(SCHEMA_DIR, file), "utf8")) }));
}

const addFormats = addFormatsModule as unknown as (ajv: Ajv2020) => void;
/** The independent oracle: ajv (draft 2020-12) with ajv-formats' full formats. */
export function ajvValidator(schema: unknown): (data: unknown) => boolean {
  const ajv = new Ajv2020({ strict: false });
  addFormats(ajv);
  const v = ajv.compile(schema as object);
  return (d) => v(d) as boolean;
}

export const bit = (mask: Uint32Array, t: number): boolean => ((mask[t >>> 5]! >>> (t & 31)) & 1) === 1;

export function allowedTokens(mask: Uint32Array, vocabSize: number): number[] {
  const out: number[] = [];
  for (let t = 0; t < vocabSize; t++) if (bit(mask, t)) out.push(t);
  return out;
}

/**
 * One random walk through a grammar's masks: prefers ending (70%) once an end token is allowed,
 * then one-byte tokens (80%), so walks finish; every token taken must be accepted. Returns the
 * token ids written (the end token left out), or undefined when the walk did not end in `maxSteps`.
 */
export function randomWalk(
  m: GrammarMatcher,
  vocab: GrammarVocab,
  r: () => number,
  maxSteps: number,
): number[] | undefined {
  const eog = [...vocab.eogTokens][0]!;
  const oneByte = oneByteTokens(vocab);
  const mask = new Uint32Array(maskWords(vocab.vocabSize));
  const ids: number[] = [];
  for (let step = 0; step < maxSteps && !m.isTerminated(); step++) {
    m.fillMask(mask);
    const allowed = allowedTokens(mask, vocab.vocabSize);
    expect(allowed.length, "some token allowed").toBeGreaterThan(0);
    let t: number;
    if (bit(mask, eog) && r() < 0.7) t = eog;
    else {
      const short = allowed.filter((x) => oneByte[x] && x !== eog);
      const pool = short.length > 0 && r() < 0.8 ? short : allowed.filter((x) => x !== eog);
      t = pool.length > 0 ? pool[Math.floor(r() * pool.length)]! : eog;
    }
    expect(m.accept(t)).toBe(true);
    if (t !== eog) ids.push(t);
  }
  return m.isTerminated() ? ids : undefined;
}

const oneByteCache = new WeakMap<GrammarVocab, boolean[]>();
function oneByteTokens(vocab: GrammarVocab): boolean[] {
  let v = oneByteCache.get(vocab);
  if (v === undefined) {
    v = Array.from(
      { length: vocab.vocabSize },
      (_, t) => !vocab.isControl(t) && vocab.tokenBytes(t).length === 1,
    );
    oneByteCache.set(vocab, v);
  }
  return v;
}

/**
 * Whether the grammar takes `text` (tokenized by `tok`) whole, each token checked against the mask
 * computed before it: a token the mask allows must be accepted, and one it forbids refused.
 */
export function takesText(g: CompiledGrammar, tok: Tokenizer, text: string): boolean {
  const mask = new Uint32Array(maskWords(tok.vocabSize));
  const m = g.matcher();
  for (const id of tokenizeForBench(tok, text)) {
    m.fillMask(mask);
    const allowed = bit(mask, id);
    expect(m.accept(id)).toBe(allowed);
    if (!allowed) return false;
  }
  return m.canEnd();
}
