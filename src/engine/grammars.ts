import { type CompiledGrammar, GrammarError, type GrammarSpec } from "../grammar/constraint.js";
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

/**
 * The engine's compiler for a tokenizer's vocabulary.
 *
 * TEMPORARY (until the grammar compiler lands on main as `compileGrammar` and its cache in
 * src/grammar/index.ts): every spec is refused with "structured output engine not available", which
 * the server answers with a 400 naming the request's structured-output field. Connecting the real
 * compiler is this one function.
 */
export function grammarCompiler(_tokenizer: Tokenizer): GrammarCompiler {
  return () => {
    throw new GrammarError("", "structured output engine not available");
  };
}
