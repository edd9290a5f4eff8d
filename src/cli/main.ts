import { SpindleError } from "../errors.js";
import { versionLine } from "./options.js";

const USAGE = `usage: spindle <command> [options]      (spindle <command> --help says more)

models
  run           chat with a model in the terminal, or answer one prompt
  pull          download a model from Hugging Face into the cache (hf.co/owner/repo:Q4_K_M)
  list          the models in the cache: size, architecture, parameters, quantization (alias: ls)
  show          what a model file says: architecture, context length, quantization mix, chat template
  rm            delete models from the cache
serving
  serve         serve a model over OpenAI-, Ollama-, TGI- and llama-server-compatible HTTP APIs
  ps            what a running server has loaded, and how full its KV cache is
tools
  generate      print the continuation of a prompt, with timings
  synth-model   write a model with random weights and a real vocabulary
  bench         load-test an OpenAI-compatible server, as vLLM's bench serve
  bench-engine  closed-loop engine throughput (no HTTP): batching modes x concurrency
  bench-grammar constrained decoding's benchmark on MaskBench-style JSON Schema test files
  calibrate     fit the simulated runner's step-cost model to a real model on this machine

  --version     print Spindle's version`;

type Command = (args: string[]) => number | Promise<number>;

/** Each command's module is loaded when it runs: `spindle --version` or `ps` does not load the HTTP server. */
const COMMANDS: Record<string, () => Promise<Command>> = {
  run: async () => (await import("./run.js")).runCommand,
  pull: async () => (await import("./pull.js")).pullCommand,
  list: async () => (await import("./models.js")).listCommand,
  ls: async () => (await import("./models.js")).listCommand,
  show: async () => (await import("./models.js")).showCommand,
  rm: async () => (await import("./models.js")).rmCommand,
  serve: async () => (await import("./serve.js")).serveCommand,
  ps: async () => (await import("./ps.js")).psCommand,
  generate: async () => (await import("./generate.js")).generateCommand,
  "synth-model": async () => (await import("./synth-model.js")).synthModelCommand,
  bench: async () => (await import("./bench.js")).benchCommand,
  "bench-engine": async () => (await import("./engine-commands.js")).benchEngineCommand,
  "bench-grammar": async () => (await import("./bench-grammar.js")).benchGrammarCommand,
  calibrate: async () => (await import("./engine-commands.js")).calibrateCommand,
};

/** True when `--version` is one of the options (before a `--`). */
function asksVersion(args: string[]): boolean {
  const end = args.indexOf("--");
  return (end < 0 ? args : args.slice(0, end)).includes("--version");
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === "--version" || cmd === "-v" || cmd === "version") {
    process.stdout.write(`${versionLine()}\n`);
    return 0;
  }
  if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") {
    process.stdout.write(`${USAGE}\n`);
    return cmd === undefined ? 2 : 0;
  }
  const load = COMMANDS[cmd];
  if (!load) {
    process.stderr.write(`spindle: unknown command "${cmd}"\n${USAGE}\n`);
    return 2;
  }
  // Every command answers --version, including those with a hand-written usage page (serve, bench).
  if (asksVersion(rest)) {
    process.stdout.write(`${versionLine()}\n`);
    return 0;
  }
  try {
    return await (await load())(rest);
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
