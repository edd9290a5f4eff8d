import type { CompiledGrammar, GrammarSpec } from "../grammar/constraint.js";
import { GrammarCache, grammarVocab } from "../grammar/index.js";
import type { Tokenizer } from "../tokenizer/index.js";

/**
 * Where the engine gets a request's compiled grammar (RequestSpec.grammar): a function from a
 * GrammarSpec to a CompiledGrammar for the engine's vocabulary, which throws GrammarError (naming
 * the spec's field at fault) for a spec it cannot compile. EngineCore calls it when a request is
 * added, on the engine's own thread (the worker), so a compile never blocks the server's event
 * loop; the compiler behind it caches by content, so n choices of one request, or many requests
 * with one schema, compile once.
 */
export type GrammarCompiler = (spec: GrammarSpec) => CompiledGrammar;

/** The engine's compiler for a tokenizer's vocabulary: compileGrammar behind a GrammarCache (src/grammar). */
export function grammarCompiler(tokenizer: Tokenizer): GrammarCompiler {
  const cache = new GrammarCache(grammarVocab(tokenizer));
  return (spec) => cache.get(spec);
}
