import { parseArgs } from "node:util";
import { benchCommand } from "../src/cli/bench.js";
import { type StartedServer, startSpindle } from "./servers.js";

/**
 * `npm run bench:backends -- --model M`: the same workload through three
 * backends, each a `spindle serve` process of its own, measured with the load
 * generator in one run:
 *
 *   local            Spindle's engine (prefix caching off, see below)
 *   openai→local     a Spindle gateway (--backend openai) in front of that same local server
 *   llamacpp         llama.cpp in process through node-llama-cpp
 *
 * Two comparisons, each interleaved (rounds A B, B A, …) so machine noise hits
 * both sides: local vs openai→local gives what the gateway hop costs (TTFT,
 * ITL), local vs llamacpp compares the engines behind the same control plane.
 *
 *   npm run bench:backends -- --model ../shared/models/stories260K.gguf
 *        [--concurrency 1,4,16] [--num-prompts 48] [--input-len 64] [--output-len 32]
 *        [--skip llamacpp]   (any other flag goes to `spindle bench`)
 */

async function main(): Promise<number> {
  const { values, tokens } = parseArgs({
    options: {
      model: { type: "string" },
      concurrency: { type: "string", default: "1,4,16" },
      "num-prompts": { type: "string", default: "48" },
      "input-len": { type: "string", default: "64" },
      "output-len": { type: "string", default: "32" },
      skip: { type: "string", multiple: true, default: [] },
    },
    strict: false,
    tokens: true,
  });
  const model = values.model as string | undefined;
  if (!model) {
    process.stderr.write(
      "usage: npm run bench:backends -- --model FILE.gguf [--concurrency LIST] [...spindle bench flags]\n",
    );
    return 2;
  }
  const known = new Set(["model", "concurrency", "num-prompts", "input-len", "output-len", "skip"]);
  const passThrough: string[] = [];
  for (const t of tokens ?? []) {
    if (t.kind === "option" && !known.has(t.name)) {
      passThrough.push(t.rawName);
      if (t.value !== undefined) passThrough.push(t.value);
    }
  }
  const skip = new Set(values.skip as string[]);
  const common = [
    "--concurrency",
    values.concurrency as string,
    "--num-prompts",
    values["num-prompts"] as string,
    "--input-len",
    values["input-len"] as string,
    "--output-len",
    values["output-len"] as string,
    "--seed",
    "1",
    ...passThrough,
  ];
  const children: StartedServer[] = [];
  try {
    // No prefix caching: the gateway's requests reach this same server, and interleaved rounds send
    // the same prompts to both targets, so a cache would favour whichever target goes second.
    const local = await startSpindle("local", ["--model", model, "--no-prefix-caching"]);
    children.push(local);
    if (!skip.has("openai")) {
      const gw = await startSpindle("openai→local", [
        "--model",
        model,
        "--backend",
        "openai",
        "--upstream",
        local.url,
      ]);
      children.push(gw);
      process.stdout.write("\n## local vs openai→local (the gateway hop)\n\n");
      await benchCommand(["--compare", `local=${local.url},openai-gw=${gw.url}`, ...common], {
        stdout: process.stdout,
        stderr: process.stderr,
        handleSigint: false,
      });
    }
    if (!skip.has("llamacpp")) {
      const lc = await startSpindle("llamacpp", ["--model", model, "--backend", "llamacpp"]);
      children.push(lc);
      process.stdout.write("\n## local vs llamacpp (the engines, same control plane)\n\n");
      await benchCommand(["--compare", `local=${local.url},llamacpp=${lc.url}`, ...common], {
        stdout: process.stdout,
        stderr: process.stderr,
        handleSigint: false,
      });
    }
    return 0;
  } finally {
    await Promise.all(children.map((c) => c.stop()));
  }
}

process.exitCode = await main();
