import { benchEngine } from "../bench/engine-bench.js";
import { calibrate } from "../engine/calibrate.js";
import { kvCacheType } from "../engine/kv-sizing.js";
import { ModelRunner } from "../engine/runner.js";
import type { BatchingMode } from "../engine/scheduler.js";
import { SpindleError } from "../errors.js";
import { ensureModel } from "../model/default-model.js";
import { DEFAULT_KV_CACHE_TYPE, KVCacheStorage } from "../model/kv-cache.js";
import { loadModel } from "../model/model.js";
import { command } from "./options.js";

/** `--model`, as both commands take it. */
const MODEL_OPTION = {
  type: "string",
  short: "m",
  arg: "M",
  description: "a .gguf path or a model name (default: the default model, pulled on first use)",
} as const;

export const CALIBRATE = command({
  name: "calibrate",
  usage: "spindle calibrate [--model M] [--repeats N]",
  summary:
    "Fits the simulated runner's step-cost model (what `serve --backend sim` uses) to a real model on this machine: times prefill and decode steps of several shapes, prints each point and the fit on stderr, and the fitted cost model as JSON on stdout.",
  options: {
    model: MODEL_OPTION,
    repeats: {
      type: "string",
      arg: "N",
      default: "3",
      description: "times each shape is measured; the fit takes the median",
    },
  },
});

/** `spindle calibrate --model M`: fits the simulated runner's cost model to this machine and model. */
export async function calibrateCommand(args: string[]): Promise<number> {
  const parsed = CALIBRATE.parse(args);
  if (!parsed) return 0;
  const { values } = parsed;
  const model = loadModel(await ensureModel(values.model));
  const c = calibrate(model, Number(values.repeats));
  for (const p of c.points) {
    process.stderr.write(
      `prefill ${String(p.prefillTokens).padStart(4)}  decode ${String(p.decodeSeqs).padStart(3)} @ctx ${String(p.context).padStart(5)}  measured ${p.measuredMs.toFixed(2).padStart(8)} ms  fitted ${p.fittedMs.toFixed(2).padStart(8)} ms\n`,
    );
  }
  process.stderr.write(`mean relative error of the fit: ${(c.relError * 100).toFixed(1)}%\n`);
  process.stdout.write(`${JSON.stringify(c.cost)}\n`);
  return 0;
}

const list = (s: string) =>
  s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x.length > 0);

export const BENCH_ENGINE = command({
  name: "bench-engine",
  usage:
    "spindle bench-engine [--model M] [--concurrency 1,8,32] [--batching continuous,static,window] [options]",
  summary:
    "Closed-loop throughput of the engine alone (no HTTP): for each concurrency, every batching mode runs the same synthetic workload in turn (interleaved, so machine noise hits all alike) and one line per run reports output tok/s, mean TTFT, latency and batch size.",
  options: {
    model: MODEL_OPTION,
    concurrency: {
      type: "string",
      arg: "LIST",
      default: "1,8,32",
      description: "comma-separated numbers of clients, each sending its next request when the last ends",
    },
    batching: {
      type: "string",
      arg: "LIST",
      default: "continuous,static,window",
      description: "comma-separated batching modes to compare (continuous, static, window)",
    },
    "requests-per-client": {
      type: "string",
      arg: "N",
      default: "2",
      description: "requests each client sends",
    },
    "prompt-tokens": {
      type: "string",
      arg: "N",
      default: "32",
      description: "random prompt tokens per request",
    },
    "max-tokens": { type: "string", arg: "N", default: "32", description: "tokens generated per request" },
    "max-num-seqs": { type: "string", arg: "N", default: "32", description: "sequences per engine batch" },
    "max-num-batched-tokens": {
      type: "string",
      arg: "N",
      default: "512",
      description: "token budget per engine step",
    },
    "batch-window-ms": {
      type: "string",
      arg: "MS",
      default: "50",
      description: "how long the window mode waits to fill a batch",
    },
    "kv-cache-type": {
      type: "string",
      arg: "LIST",
      default: DEFAULT_KV_CACHE_TYPE,
      description: "comma-separated KV cache types to compare (f16, f32), interleaved like the modes",
    },
  },
});

/**
 * `spindle bench-engine`: closed-loop throughput of the engine alone (no HTTP) for several
 * batching modes at several concurrencies, modes interleaved so machine noise hits all alike.
 */
export async function benchEngineCommand(args: string[]): Promise<number> {
  const parsed = BENCH_ENGINE.parse(args);
  if (!parsed) return 0;
  const { values } = parsed;
  const modes = list(values.batching) as BatchingMode[];
  for (const m of modes)
    if (!["continuous", "static", "window"].includes(m))
      throw new SpindleError(`unknown batching mode "${m}"`);
  const model = loadModel(await ensureModel(values.model));
  const prompt = Number(values["prompt-tokens"]);
  const maxTokens = Number(values["max-tokens"]);
  const maxNumSeqs = Number(values["max-num-seqs"]);
  const kvTypes = list(values["kv-cache-type"]).map(kvCacheType);
  const blocks = Math.ceil((prompt + maxTokens) / 16) * maxNumSeqs + 16;
  const kvMiB = kvTypes
    .map(
      (t) =>
        `${((blocks * 16 * KVCacheStorage.bytesPerToken(model.config, t)) / 2 ** 20).toFixed(1)} MiB ${t}`,
    )
    .join(", ");
  process.stdout.write(
    `model ${model.config.name} (${model.config.arch}, ${(model.weightBytes / 2 ** 20).toFixed(1)} MiB), prompt ${prompt}, output ${maxTokens} tokens, KV ${kvMiB}\n`,
  );
  process.stdout.write(
    "concurrency  mode         kv   requests  out tok/s  vs first  mean TTFT ms  mean latency ms  mean batch\n",
  );
  for (const c of list(values.concurrency).map(Number)) {
    let first: number | undefined;
    for (const batching of modes)
      for (const kv of kvTypes) {
        const r = await benchEngine(
          new ModelRunner(model, blocks, undefined, undefined, kv),
          {
            batching,
            maxNumSeqs,
            maxNumBatchedTokens: Number(values["max-num-batched-tokens"]),
            batchWindowMs: Number(values["batch-window-ms"]),
            tokenizer: model.tokenizer,
          },
          {
            concurrency: c,
            requests: c * Number(values["requests-per-client"]),
            promptTokens: prompt,
            maxTokens,
            vocabSize: model.config.vocabSize,
          },
        );
        first ??= r.outputTokPerSec;
        process.stdout.write(
          `${String(c).padStart(11)}  ${batching.padEnd(11)}  ${kv}  ${String(r.requests).padStart(8)}  ${r.outputTokPerSec.toFixed(1).padStart(9)}  ${(r.outputTokPerSec / first).toFixed(2).padStart(7)}x  ${r.meanTtftMs.toFixed(0).padStart(12)}  ${r.meanLatencyMs.toFixed(0).padStart(15)}  ${r.meanBatch.toFixed(1).padStart(10)}\n`,
        );
      }
  }
  return 0;
}
