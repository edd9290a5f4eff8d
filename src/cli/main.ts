import { SpindleError } from "../errors.js";
import { benchCommand } from "./bench.js";
import { benchGrammarCommand } from "./bench-grammar.js";
import { benchEngineCommand, calibrateCommand } from "./engine-commands.js";
import { generateCommand } from "./generate.js";
import { pullCommand } from "./pull.js";
import { serveCommand } from "./serve.js";
import { synthModelCommand } from "./synth-model.js";

const USAGE = `usage: spindle <command> [options]

commands:
  generate      print the continuation of a prompt (spindle generate --help)
  pull          download a GGUF from Hugging Face into the cache (spindle pull --help)
  synth-model   write a model with random weights and a real vocabulary (spindle synth-model --help)
  calibrate     fit the simulated runner's step-cost model to a real model on this machine
  bench         load-test an OpenAI-compatible server like vLLM's bench serve (spindle bench --help)
  bench-engine  closed-loop engine throughput (no HTTP): batching modes x concurrency
  bench-grammar constrained decoding's benchmark on JSON Schema test files (spindle bench-grammar --help)
  serve         serve a model over an OpenAI-compatible HTTP API (spindle serve --help)`;

const COMMANDS: Record<string, (args: string[]) => number | Promise<number>> = {
  generate: generateCommand,
  pull: pullCommand,
  "synth-model": synthModelCommand,
  calibrate: calibrateCommand,
  "bench-engine": benchEngineCommand,
  "bench-grammar": benchGrammarCommand,
  serve: serveCommand,
  bench: benchCommand,
};

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") {
    process.stdout.write(`${USAGE}\n`);
    return cmd === undefined ? 2 : 0;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    process.stderr.write(`spindle: unknown command "${cmd}"\n${USAGE}\n`);
    return 2;
  }
  try {
    return await run(rest);
  } catch (err) {
    // Errors a user can act on are one line; anything else is a bug and keeps its stack.
    if (err instanceof SpindleError) {
      process.stderr.write(`spindle: ${err.message}\n`);
      return 1;
    }
    if (String((err as { code?: string }).code).startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`spindle ${cmd}: ${(err as Error).message}\n`);
      return 2;
    }
    throw err;
  }
}
