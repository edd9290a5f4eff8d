import { resolve } from "node:path";
import { parseArgs } from "node:util";
import type { LlamaContext, LlamaModel, Token } from "node-llama-cpp";
import { generate } from "../model/generate.js";
import { DEFAULT_BLOCK_SIZE, KVCacheStorage } from "../model/kv-cache.js";
import { loadModel, type Model } from "../model/model.js";
import { Rng } from "../sampling/rng.js";

/**
 * `npm run bench:vs-llamacpp -- --model FILE`: Spindle's engine (its default kernels and threads)
 * against llama.cpp (node-llama-cpp's prebuilt CPU binary) on the same GGUF file, in the same run.
 * A quick measurement, not a test. Each side is warmed up once; each figure is the median of
 * `--repeats` timed runs.
 *
 *   node dist/bench/vs-llamacpp.js --model FILE [--threads 1,2] [--prompt-tokens 128]
 *                                  [--gen-tokens 128] [--parallel 8,32] [--parallel-tokens 32]
 *                                  [--repeats 3]
 *
 * Metrics (same definition on both sides):
 *  - prompt tok/s: one forward/evaluation of `--prompt-tokens` random token ids in a fresh sequence;
 *  - gen tok/s, batch 1: greedy decode of `--gen-tokens` tokens after a 4-token prompt, timed after
 *    the first generated token (the prompt is not counted);
 *  - gen tok/s, N parallel: N sequences, each a 16-token prefill then `--parallel-tokens` greedy
 *    decode steps, all N decoded together; timed from when every sequence has its first token
 *    (prefill excluded), aggregate tokens over all sequences / time.
 */

const PAR_PROMPT = 16;
const GEN_PROMPT = 4;

function ints(s: string): number[] {
  return s
    .split(",")
    .map((x) => Number(x.trim()))
    .filter((x) => {
      if (!(Number.isInteger(x) && x >= 1)) throw new Error(`expected positive integers, got "${s}"`);
      return true;
    });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function randomTokens(rng: Rng, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => 3 + (rng.nextU32() % (vocab - 3)));
}

function argmax(row: Float32Array, off: number, n: number): number {
  let best = 0;
  let bv = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) {
    const v = row[off + i]!;
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  return best;
}

/** Runs `fn` once as warm-up, then `repeats` times; the median of the returned rates. */
async function measure(repeats: number, fn: () => number | Promise<number>): Promise<number> {
  await fn();
  const r: number[] = [];
  for (let i = 0; i < repeats; i++) r.push(await fn());
  return median(r);
}

// ---------------------------------------------------------------- Spindle

function spindlePrompt(model: Model, tokens: number[]): number {
  const numBlocks = Math.ceil(tokens.length / DEFAULT_BLOCK_SIZE);
  const kv = new KVCacheStorage(model.config, numBlocks);
  const blockTable = Array.from({ length: numBlocks }, (_, i) => i);
  const t0 = performance.now();
  model.transformer.forward(kv, [{ tokens, pos: 0, blockTable }]);
  const rate = tokens.length / ((performance.now() - t0) / 1000);
  kv.dispose();
  return rate;
}

function spindleGen(model: Model, prompt: number[], n: number): number {
  const r = generate(model, prompt, { maxTokens: n, sampling: { temperature: 0 }, stopAtEog: false });
  // generateMs covers sampling token 1 (from the prompt's logits) through token n: n - 1 forwards.
  return (r.tokens.length - 1) / (r.generateMs / 1000);
}

function spindleParallel(model: Model, prompts: number[][], steps: number): number {
  const vocab = model.config.vocabSize;
  const n = prompts.length;
  const perSeq = Math.ceil((PAR_PROMPT + steps) / DEFAULT_BLOCK_SIZE);
  const kv = new KVCacheStorage(model.config, perSeq * n);
  const tables = prompts.map((_, s) => Array.from({ length: perSeq }, (_, i) => s * perSeq + i));
  const pre = model.transformer.forward(
    kv,
    prompts.map((tokens, s) => ({ tokens, pos: 0, blockTable: tables[s]! })),
  );
  let next = pre.map((l) => argmax(l!, 0, vocab));
  const t0 = performance.now();
  for (let step = 0; step < steps; step++) {
    const out = model.transformer.forward(
      kv,
      next.map((t, s) => ({ tokens: [t], pos: PAR_PROMPT + step, blockTable: tables[s]! })),
    );
    next = out.map((l) => argmax(l!, 0, vocab));
  }
  const rate = (n * steps) / ((performance.now() - t0) / 1000);
  kv.dispose();
  return rate;
}

// ---------------------------------------------------------------- llama.cpp

async function llamaContext(
  model: LlamaModel,
  threads: number,
  sequences: number,
  perSeq: number,
  batch: number,
): Promise<LlamaContext> {
  return model.createContext({
    contextSize: sequences * perSeq,
    batchSize: batch,
    sequences,
    threads: { ideal: threads, min: threads },
    ignoreMemorySafetyChecks: true,
  });
}

async function llamaPrompt(model: LlamaModel, threads: number, tokens: number[]): Promise<number> {
  const ctx = await llamaContext(model, threads, 1, tokens.length + 16, tokens.length);
  try {
    const seq = ctx.getSequence();
    const t0 = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(tokens as Token[]);
    return tokens.length / ((performance.now() - t0) / 1000);
  } finally {
    await ctx.dispose();
  }
}

/**
 * N sequences decoded together: each evaluates its prompt and takes its first token, waits until
 * every sequence has one (the barrier), then generates `steps` more; only the part after the
 * barrier is timed.
 */
async function llamaParallel(
  model: LlamaModel,
  threads: number,
  prompts: number[][],
  steps: number,
): Promise<number> {
  const n = prompts.length;
  const promptLen = prompts[0]!.length;
  const ctx = await llamaContext(model, threads, n, promptLen + steps + 16, Math.max(512, n * promptLen));
  try {
    let arrived = 0;
    let release!: () => void;
    const barrier = new Promise<void>((r) => {
      release = r;
    });
    let t0 = 0;
    const counts = await Promise.all(
      prompts.map(async (p) => {
        const seq = ctx.getSequence();
        let got = 0;
        for await (const _t of seq.evaluate(p as Token[], { temperature: 0 })) {
          if (got === 0) {
            if (++arrived === n) {
              t0 = performance.now();
              release();
            }
            await barrier;
          }
          if (got++ >= steps) break;
        }
        return got - 1;
      }),
    );
    const t1 = performance.now();
    return counts.reduce((a, b) => a + b, 0) / ((t1 - t0) / 1000);
  } finally {
    await ctx.dispose();
  }
}

// ---------------------------------------------------------------- main

interface Row {
  metric: string;
  spindle: number;
  llama: Map<number, number>;
}

function fmt(x: number): string {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      threads: { type: "string", default: "1,2" },
      "prompt-tokens": { type: "string", default: "128" },
      "gen-tokens": { type: "string", default: "128" },
      parallel: { type: "string", default: "8,32" },
      "parallel-tokens": { type: "string", default: "32" },
      repeats: { type: "string", default: "3" },
      seed: { type: "string", default: "1" },
    },
  });
  if (!values.model) throw new Error("--model FILE is required");
  const path = resolve(values.model);
  const threadList = ints(values.threads!);
  const promptTokens = ints(values["prompt-tokens"]!)[0]!;
  const genTokens = ints(values["gen-tokens"]!)[0]!;
  const parallel = ints(values.parallel!);
  const parTokens = ints(values["parallel-tokens"]!)[0]!;
  const repeats = ints(values.repeats!)[0]!;
  const rng = new Rng(Number(values.seed));

  const model = loadModel(path);
  const kernels = model.transformer.kernels as { threads?: number; ready?: () => Promise<void> };
  await kernels.ready?.();
  const vocab = model.config.vocabSize;
  const ctxLen = model.config.contextLength;
  if (promptTokens > ctxLen || GEN_PROMPT + genTokens > ctxLen || PAR_PROMPT + parTokens > ctxLen)
    throw new Error(`token counts exceed the model's context of ${ctxLen}`);
  const promptIds = randomTokens(rng, promptTokens, vocab);
  const genPrompt = randomTokens(rng, GEN_PROMPT, vocab);
  const parPrompts = new Map(
    parallel.map((n) => [n, Array.from({ length: n }, () => randomTokens(rng, PAR_PROMPT, vocab))]),
  );

  console.log(
    `model ${path}: ${model.config.nLayers} layers, dim ${model.config.dim}, vocab ${vocab}; ` +
      `Spindle kernels: ${model.transformer.kernels.name} (${kernels.threads ?? 1} thread(s), --threads or $SPINDLE_THREADS); repeats ${repeats}, median`,
  );
  const rows: Row[] = [
    { metric: `prompt tok/s (${promptTokens} tokens)`, spindle: 0, llama: new Map() },
    { metric: `gen tok/s, batch 1 (${genTokens} tokens)`, spindle: 0, llama: new Map() },
    ...parallel.map((n) => ({
      metric: `gen tok/s, ${n} parallel (aggregate, ${parTokens} steps)`,
      spindle: 0,
      llama: new Map<number, number>(),
    })),
  ];

  rows[0]!.spindle = await measure(repeats, () => spindlePrompt(model, promptIds));
  rows[1]!.spindle = await measure(repeats, () => spindleGen(model, genPrompt, genTokens));
  for (const [i, n] of parallel.entries())
    rows[2 + i]!.spindle = await measure(repeats, () =>
      spindleParallel(model, parPrompts.get(n)!, parTokens),
    );

  const m = await import("node-llama-cpp");
  const llama = await m.getLlama({ gpu: false, build: "never", logLevel: m.LlamaLogLevel.error });
  const lmodel = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  try {
    for (const t of threadList) {
      rows[0]!.llama.set(t, await measure(repeats, () => llamaPrompt(lmodel, t, promptIds)));
      // Batch 1 is the parallel measurement with one sequence: same timing rule.
      rows[1]!.llama.set(
        t,
        await measure(repeats, () => llamaParallel(lmodel, t, [genPrompt], genTokens - 1)),
      );
      for (const [i, n] of parallel.entries())
        rows[2 + i]!.llama.set(
          t,
          await measure(repeats, () => llamaParallel(lmodel, t, parPrompts.get(n)!, parTokens)),
        );
    }
  } finally {
    await lmodel.dispose();
    await llama.dispose();
  }

  const header = [
    "metric",
    "Spindle",
    "llama.cpp (best)",
    "threads",
    "Spindle / llama.cpp",
    "llama.cpp per thread count",
  ];
  const table = rows.map((r) => {
    let bestT = threadList[0]!;
    for (const t of threadList) if (r.llama.get(t)! > r.llama.get(bestT)!) bestT = t;
    const best = r.llama.get(bestT)!;
    return [
      r.metric,
      fmt(r.spindle),
      fmt(best),
      String(bestT),
      (r.spindle / best).toFixed(2),
      threadList.map((t) => `${t}t: ${fmt(r.llama.get(t)!)}`).join(", "),
    ];
  });
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map((_, i) => (i === 0 || i === 5 ? "---" : "---:")).join("|")}|`);
  for (const r of table) console.log(`| ${r.join(" | ")} |`);
}

await main();
