import type { Tokenizer } from "../tokenizer/index.js";

/**
 * The boundary between constrained decoding and the engine: what a request asks its output to be
 * (GrammarSpec, plain data that crosses the worker boundary), the grammar compiled once per distinct
 * spec (CompiledGrammar, immutable, shared), and one matcher per sequence (GrammarMatcher, which
 * walks the tokens the sequence accepts and says which tokens may come next).
 *
 * The engine holds only these types: the compiler behind them (JSON Schema, regex, choice, GBNF,
 * Lark) is free to change.
 */

/** What the output must be. Every API's structured-output field becomes one of these. */
export type GrammarSpec =
  /** A JSON value valid against this JSON Schema (draft 2020-12 keywords; unsupported ones are refused). */
  | { type: "json_schema"; schema: unknown }
  /** Any JSON object (OpenAI's json_object; Ollama's format: "json"). */
  | { type: "json_object" }
  /** Text matching this regular expression, whole. */
  | { type: "regex"; pattern: string }
  /** Exactly one of these strings. */
  | { type: "choice"; choices: string[] }
  /** A context-free grammar in llama.cpp's GBNF (start symbol `root`). */
  | { type: "gbnf"; grammar: string }
  /** A context-free grammar in Lark's EBNF form (start symbol `start`). */
  | { type: "lark"; grammar: string }
  /**
   * Free text in which the grammar engages at a trigger: wherever `trigger` is written, compact JSON
   * valid against `schema` must follow (after at most a few whitespace bytes), then `end`, then free
   * text again; at most `maxSegments` such segments (default: any number). The text itself is any
   * bytes that do not hold `trigger`. Tool calls under tool_choice `auto` (Hermes: `<tool_call>`).
   */
  | { type: "triggered"; trigger: string; end: string; schema: unknown; maxSegments?: number };

/** The vocabulary facts a grammar is compiled against. */
export interface GrammarVocab {
  readonly vocabSize: number;
  /** The bytes token `id` adds to the output (Tokenizer.tokenBytes without special rendering). */
  tokenBytes(id: number): Uint8Array;
  /** Ids that end generation (the tokenizer's end-of-generation set). */
  readonly eogTokens: ReadonlySet<number>;
  /** Control/special tokens: never allowed inside a grammar (they add no bytes). */
  isControl(id: number): boolean;
}

export function grammarVocab(tok: Tokenizer): GrammarVocab {
  return {
    vocabSize: tok.vocabSize,
    tokenBytes: (id) => tok.tokenBytes(id, false),
    eogTokens: tok.eogTokens,
    isControl: (id) => tok.isControl(id),
  };
}

/** A spec that cannot be compiled: `field` names the spec's part at fault (e.g. "schema.properties.age.format"). */
export class GrammarError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "GrammarError";
  }
}

/** A grammar compiled against one vocabulary: immutable, shared by every sequence using it. */
export interface CompiledGrammar {
  /** A fresh matcher at the start of the grammar. */
  matcher(): GrammarMatcher;
}

/** Number of 32-bit words a token bitmask needs for this vocabulary. */
export const maskWords = (vocabSize: number): number => (vocabSize + 31) >>> 5;

/**
 * One sequence's position in its grammar. Bit `t` of a mask (mask[t >>> 5] >>> (t & 31) & 1) set
 * means token `t` may be sampled next. End-of-generation tokens are allowed exactly when the text
 * so far is complete (canEnd()); accepting one then terminates the matcher.
 */
export interface GrammarMatcher {
  /** Writes the allowed-token mask for the next token into `mask` (maskWords(vocabSize) words). */
  fillMask(mask: Uint32Array): void;
  /** Advances by one token; returns false, leaving the state unchanged, when `token` is not allowed. */
  accept(token: number): boolean;
  /** The output so far is complete and nothing may follow (or an end token was accepted): the sequence ends with `stop`. */
  isTerminated(): boolean;
  /** The output so far is complete (an end token would be allowed), though more may follow. */
  canEnd(): boolean;
  /**
   * The tokens the grammar forces from here, in order (the only continuation the grammar allows,
   * in the tokenization the matcher chooses), at most `max`; empty when there is a choice.
   * Jump-forward appends them without sampling. They are not accepted: the caller accepts them.
   */
  forcedTokens(max: number): number[];
  /** Undoes the last `n` accepted tokens (preemption with recompute, speculative decoding). */
  rollback(n: number): void;
  /** An independent copy at the same position (n > 1 forks). */
  clone(): GrammarMatcher;
}
