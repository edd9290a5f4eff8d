import { GrammarError } from "./constraint.js";
import type { Grammar } from "./ir.js";

export function larkGrammar(_src: string, field = "grammar"): Grammar {
  throw new GrammarError(field, "Lark grammars are not supported yet");
}
