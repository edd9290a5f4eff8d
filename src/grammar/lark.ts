import { GrammarError } from "./constraint.js";
import type { Grammar } from "./ir.js";

/**
 * Lark/EBNF grammars are part of the GrammarSpec boundary but not compiled yet: they are refused
 * by name (never ignored), and GBNF covers the same context-free grammars meanwhile.
 */
export function larkGrammar(_src: string, field = "grammar"): Grammar {
  throw new GrammarError(field, "Lark grammars are not supported yet (use GBNF)");
}
