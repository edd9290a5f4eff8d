import { parseArgs } from "node:util";
import type { Token } from "node-llama-cpp";
import { percentile } from "../src/bench/metrics.js";
import { EngineCore } from "../src/engine/engine.js";
import { ModelRunner } from "../src/engine/runner.js";
import { loadModel, type Model } from "../src/model/model.js";
import { tuneSmallSplits } from "../src/model/tune-splits.js";
import { Rng } from "../src/sampling/rng.js";

/**
 * `npm run bench:embeddings -- --model FILE`: embeddings per second, Spindle's engine (in process,
 * no HTTP: the scheduler batches embedding requests as it does for the server) against llama.cpp
 * (node-llama-cpp's embedding context) on the same GGUF with the same thread count.
 *
 *   npx tsx bench/embeddings.ts --model FILE [--threads 2] [--batch 1,32] [--inputs 64] [--tokens 32]
 *                               [--repeats 5] [--seed 1]
 *
 * Each round embeds `--inputs` different inputs of `--tokens` random token ids (BOS first where
 * the vocabulary wants one), so nothing is served from the prefix cache. "batch N" keeps N
 * requests in flight: Spindle's scheduler runs them in the same steps (up to its 512-token step
 * budget); node-llama-cpp's embedding context evaluates one input at a time (it has one
 * sequence), so there N concurrent calls queue. Runs of the two sides are interleaved, and each
 * figure is the median of `--repeats` rounds, with the min–max range as the noise.
 */

const USAGE = `usage: npm run bench:embeddings -- --model FILE [--threads 2] [--batch 1,32] [--inputs 64]
           [--tokens 32] [--repeats 5] [--seed 1]

Embeddings per second: Spindle's engine vs node-llama-cpp's embedding context, same file and threads.`;

interface Options {
  path: string;
  threads: number;
  batches: number[];
  inputs: number;
  tokens: number;
  repeats: number;
  seed: number;
}

function parseOptions(): Options | undefined {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      threads: { type: "string", default: "2" },
      batch: { type: "string", default: "1,32" },
      inputs: { type: "string", default: "64" },
      tokens: { type: "string", default: "32" },
      repeats: { type: "string", default: "5" },
      seed: { type: "string", default: "1" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help || !values.model) {
    console.log(USAGE);
    if (!values.help) process.exitCode = 2;
    return undefined;
  }
  return {
    path: values.model,
    threads: Number(values.threads),
    batches: values.batch!.split(",").map(Number),
    inputs: Number(values.inputs),
    tokens: Number(values.tokens),
    repeats: Number(values.repeats),
    seed: Number(values.seed),
  };
}

function makeInputs(model: Model, o: Options): number[][] {
  const rng = new Rng(o.seed);
  const V = model.config.vocabSize;
  const bos = model.tokenizer.addBos ? model.tokenizer.bos : undefined;
  return Array.from({ length: o.inputs }, () => {
    const ids = Array.from({ length: o.tokens }, () => 3 + (rng.nextU32() % (V - 3)));
    if (bos !== undefined) ids[0] = bos;
    return ids;
  });
}

/** Spindle: `batch` requests in flight in the engine until every input is embedded. Embeddings/s. */
function spindleRound(engine: EngineCore, inputs: number[][], batch: number, round: number): number {
  let next = 0;
  let done = 0;
  const t0 = performance.now();
  while (done < inputs.length) {
    while (next < inputs.length && engine.numUnfinished < batch) {
      engine.add({ id: `r${round}-${next}`, kind: "embed", prompt: inputs[next]!, maxTokens: 1 });
      next++;
    }
    for (const e of engine.step()) if (e.finish) done++;
  }
  return inputs.length / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const o = parseOptions();
  if (!o) return;
  // The WebAssembly kernels take their thread count from here when the model loads.
  process.env.SPINDLE_THREADS = String(o.threads);
  const model = loadModel(o.path);
  await tuneSmallSplits(model);
  const inputs = makeInputs(model, o);
  const ctxLen = Math.max(64, o.tokens + 8);
  const blocks = Math.ceil(ctxLen / 16) * Math.max(...o.batches) + 16;
  // Prefix caching off: every round embeds the same inputs, which must be computed every time.
  const engine = new EngineCore(new ModelRunner(model, blocks), {
    tokenizer: model.tokenizer,
    prefixCaching: false,
    maxNumSeqs: Math.max(...o.batches),
  });

  const m = await import("node-llama-cpp");
  const llama = await m.getLlama({ gpu: false, build: "never", logLevel: m.LlamaLogLevel.error });
  const lmodel = await llama.loadModel({ modelPath: o.path, gpuLayers: 0 });
  const lctx = await lmodel.createEmbeddingContext({
    contextSize: ctxLen,
    batchSize: ctxLen,
    threads: o.threads,
  });
  const llamaRound = async (batch: number): Promise<number> => {
    let next = 0;
    const t0 = performance.now();
    const worker = async () => {
      while (next < inputs.length) await lctx.getEmbeddingFor(inputs[next++]! as Token[]);
    };
    await Promise.all(Array.from({ length: batch }, worker));
    return inputs.length / ((performance.now() - t0) / 1000);
  };

  console.log(
    `model ${o.path}: ${model.config.arch}, ${model.config.nLayers} layers, dim ${model.config.dim}, pooling ${model.config.pooling}; ` +
      `${o.inputs} inputs of ${o.tokens} tokens per round; ${o.threads} thread(s) each side; ` +
      `Spindle ${model.transformer.kernels.name} kernels; median of ${o.repeats} interleaved rounds (min–max)`,
  );
  // Warm-up, both sides.
  spindleRound(engine, inputs.slice(0, 4), 4, -1);
  await lctx.getEmbeddingFor(inputs[0]! as Token[]);

  const results = new Map<string, number[]>();
  const push = (k: string, v: number) => results.set(k, [...(results.get(k) ?? []), v]);
  for (let r = 0; r < o.repeats; r++) {
    for (const b of o.batches) {
      push(`spindle ${b}`, spindleRound(engine, inputs, b, r * 100 + b));
      push(`llama ${b}`, await llamaRound(b));
    }
  }
  const fmt = (xs: number[]) =>
    `${percentile(xs, 50).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;
  console.log("batch | Spindle emb/s | llama.cpp emb/s | ratio");
  for (const b of o.batches) {
    const s = results.get(`spindle ${b}`)!;
    const l = results.get(`llama ${b}`)!;
    console.log(`${b} | ${fmt(s)} | ${fmt(l)} | ${(percentile(s, 50) / percentile(l, 50)).toFixed(2)}×`);
  }
  await lctx.dispose();
  await lmodel.dispose();
  await model.transformer.kernels.close?.();
}

await main();
