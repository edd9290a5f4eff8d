import { parseArgs } from "node:util";
import { formatGrammarBench, runGrammarBench } from "../bench/grammar-bench.js";
import { readGGUF } from "../gguf/reader.js";
import { tokenizerFromGGUF } from "../tokenizer/index.js";

const USAGE = `usage: spindle bench-grammar --data DIR --vocab FILE.gguf [--json]

Constrained decoding's benchmark in MaskBench's form: for each JSON file in DIR
({"description", "meta", "schema", "tests": [{"description", "data", "valid"}]}), compile the
schema (time to first mask), then feed each test's compact JSON token by token through the
matcher, checking each token against the mask before it (time per mask).

options:
  --data DIR         folder of schema test files (e.g. bench/grammar-schemas)
  --vocab FILE.gguf  the vocabulary (any GGUF with tokenizer metadata; a vocab-only file will do)
  --json             print one JSON object instead of the table
  -h, --help         this text`;

export async function benchGrammarCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: "string" },
      vocab: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help || !values.data || !values.vocab) {
    process.stdout.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const tok = tokenizerFromGGUF(readGGUF(values.vocab));
  const report = runGrammarBench(values.data, tok);
  if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else process.stdout.write(`${formatGrammarBench(report)}\n`);
  return 0;
}
