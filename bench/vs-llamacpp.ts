import { writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { LlamaContext, LlamaModel, Token } from "node-llama-cpp";
import { percentile } from "../src/bench/metrics.js";
import { readGGUF } from "../src/gguf/reader.js";
import { typeName } from "../src/gguf/types.js";
import { generate } from "../src/model/generate.js";
import { DEFAULT_BLOCK_SIZE, KVCacheStorage } from "../src/model/kv-cache.js";
import { loadModel, type Model } from "../src/model/model.js";
import { tuneSmallSplits } from "../src/model/tune-splits.js";
import { Rng } from "../src/sampling/rng.js";
import { Sampler } from "../src/sampling/sampler.js";
import { llamaCppTools } from "./llama-cpp-build.js";
import { benchNative, NATIVE_TOOLS, type NativeFigures } from "./native-llama.js";
import {
  ANCHOR_SOURCE,
  ANCHORS,
  type Anchor,
  evaluateTargets,
  type MetricKey,
  type TargetResult,
  verdict,
} from "./vs-llamacpp-targets.js";

/**
 * `npm run bench:vs-llamacpp -- --model FILE`: Spindle's forward pass (its default
 * kernels, `--spindle-threads` threads, default 2) against llama.cpp (node-llama-cpp's prebuilt CPU
 * binary, each of `--threads`; the best counts) on the same GGUF file, in the same run, printed as
 * ratios. For the model shapes the project's issue names, it also compares with native llama.cpp
 * figures measured by the issue's author and says whether the issue's targets are met (the table of
 * anchors and targets is vs-llamacpp-targets.ts).
 * With `--native DIR` (llama.cpp's own llama-bench and llama-batched-bench, see native-llama.ts)
 * it also runs native llama.cpp on the file and judges the targets against that run too.
 * A quick measurement, not a test. Each side is warmed up once; each figure is the median of
 * `--repeats` timed runs.
 *
 *   npx tsx bench/vs-llamacpp.ts --model FILE [--spindle-threads 2] [--threads 1,2]
 *                                [--prompt-tokens 128] [--gen-tokens 128] [--parallel 8,32]
 *                                [--parallel-tokens 32] [--parallel-prompt 16] [--repeats 3] [--json FILE]
 *                                [--native DIR|auto [--native-threads 2]]
 *
 * Metrics (same definition on both sides):
 *  - prompt tok/s: one forward/evaluation of `--prompt-tokens` random token ids in a fresh sequence;
 *  - gen tok/s, batch 1: greedy decode of `--gen-tokens` tokens after a 4-token prompt, timed after
 *    the first generated token (the prompt is not counted);
 *  - gen tok/s, N parallel: N sequences, each a prefill of `--parallel-prompt` tokens then
 *    `--parallel-tokens` greedy decode steps, all N decoded together; timed from when every
 *    sequence has its first token (prefill excluded), aggregate tokens over all sequences / time.
 */

const USAGE = `usage: npm run bench:vs-llamacpp -- --model FILE [--spindle-threads 2] [--threads 1,2]
           [--prompt-tokens 128] [--gen-tokens 128] [--parallel 8,32] [--parallel-tokens 32]
           [--parallel-prompt 16] [--repeats 3] [--seed 1] [--json OUT] [--native DIR|auto [--native-threads N]]

Spindle (WebAssembly kernels, --spindle-threads) against node-llama-cpp (each of --threads; the
better counts) on the same GGUF: prompt tok/s, generation tok/s at batch 1 and with N parallel
sequences, as ratios, then the fast-kernels targets for the model shapes the issue names.
--native DIR: a folder with llama.cpp's llama-bench and llama-batched-bench (built from source;
--native auto: built once from node-llama-cpp's llama.cpp sources into ~/.cache/spindle/llama.cpp);
they run on the same file with --native-threads (default: --spindle-threads), and the targets
are judged against that run as well as against the issue's figures.`;

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

function randomTokens(rng: Rng, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => 3 + (rng.nextU32() % (vocab - 3)));
}

/** Runs `fn` once as warm-up, then `repeats` times; the median of the returned rates. */
async function measure(repeats: number, fn: () => number | Promise<number>): Promise<number> {
  await fn();
  const r: number[] = [];
  for (let i = 0; i < repeats; i++) r.push(await fn());
  return percentile(r, 50);
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
  const promptLen = prompts[0]!.length;
  const perSeq = Math.ceil((promptLen + steps) / DEFAULT_BLOCK_SIZE);
  const kv = new KVCacheStorage(model.config, perSeq * n);
  const tables = prompts.map((_, s) => Array.from({ length: perSeq }, (_, i) => s * perSeq + i));
  const pre = model.transformer.forward(
    kv,
    prompts.map((tokens, s) => ({ tokens, pos: 0, blockTable: tables[s]! })),
  );
  // Greedy through the engine's own sampler, as the runner samples each sequence. This loop only
  // times forward passes: a fixed number of steps, as llama-batched-bench runs, with no end-of-generation,
  // stop or detokenizing (token acceptance lives in src/protocol/output.ts, which generate() uses above).
  const k = model.transformer.kernels;
  const sampler = new Sampler({ temperature: 0 }, vocab, k);
  const none: number[] = [];
  let next = pre.map((l) => sampler.sample(l!, none).token);
  const t0 = performance.now();
  for (let step = 0; step < steps; step++) {
    // As the engine's runner does: logits stay in the kernels' memory until sampled.
    const out = model.transformer.forward(
      kv,
      next.map((t, s) => ({ tokens: [t], pos: promptLen + step, blockTable: tables[s]! })),
      { transientLogits: true },
    );
    next = out.map((l) => sampler.sample(l!, none).token);
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

// ---------------------------------------------------------------- the run

/** The file's weight type: the one type of all its matrices, "Q4_K_M" for that ftype, else "mixed (…)". */
function weightsLabel(path: string): string {
  const g = readGGUF(path);
  try {
    if (g.getNumber("general.file_type", -1) === 15) return "Q4_K_M"; // LLAMA_FTYPE_MOSTLY_Q4_K_M
    const types = new Set([...g.tensors.values()].filter((t) => t.dims.length === 2).map((t) => t.type));
    const names = [...types].map(typeName);
    return names.length === 1 ? names[0]! : `mixed (${names.join(", ")})`;
  } finally {
    g.close();
  }
}

interface Options {
  path: string;
  threadList: number[];
  promptTokens: number;
  genTokens: number;
  parallel: number[];
  parTokens: number;
  parPrompt: number;
  repeats: number;
  seed: number;
  spindleThreads: number;
  nativeDir: string | undefined;
  nativeThreads: number;
  json: string | undefined;
}

/** The command line, or undefined after printing the usage (--help, or no --model). */
function parseOptions(): Options | undefined {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      threads: { type: "string", default: "1,2" },
      "prompt-tokens": { type: "string", default: "128" },
      "gen-tokens": { type: "string", default: "128" },
      parallel: { type: "string", default: "8,32" },
      "parallel-tokens": { type: "string", default: "32" },
      "parallel-prompt": { type: "string", default: "16" },
      repeats: { type: "string", default: "3" },
      seed: { type: "string", default: "1" },
      "spindle-threads": { type: "string", default: "2" },
      json: { type: "string" },
      native: { type: "string" },
      "native-threads": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || !values.model) {
    console.log(USAGE);
    if (!values.help) process.exitCode = 2;
    return undefined;
  }
  const spindleThreads = ints(values["spindle-threads"]!)[0]!;
  return {
    path: resolve(values.model),
    threadList: ints(values.threads!),
    promptTokens: ints(values["prompt-tokens"]!)[0]!,
    genTokens: ints(values["gen-tokens"]!)[0]!,
    parallel: ints(values.parallel!),
    parTokens: ints(values["parallel-tokens"]!)[0]!,
    parPrompt: ints(values["parallel-prompt"]!)[0]!,
    repeats: ints(values.repeats!)[0]!,
    seed: Number(values.seed),
    spindleThreads,
    nativeDir:
      values.native === undefined ? undefined : values.native === "auto" ? "auto" : resolve(values.native),
    nativeThreads: values["native-threads"] ? ints(values["native-threads"])[0]! : spindleThreads,
    json: values.json,
  };
}

/** The token ids every side evaluates: one prompt, the batch-1 prompt, and N prompts per parallel count. */
interface Inputs {
  promptIds: number[];
  genPrompt: number[];
  parPrompts: Map<number, number[][]>;
}

function makeInputs(o: Options, vocab: number, ctxLen: number): Inputs {
  if (o.promptTokens > ctxLen || GEN_PROMPT + o.genTokens > ctxLen || o.parPrompt + o.parTokens > ctxLen)
    throw new Error(`token counts exceed the model's context of ${ctxLen}`);
  const rng = new Rng(o.seed);
  const promptIds = randomTokens(rng, o.promptTokens, vocab);
  const genPrompt = randomTokens(rng, GEN_PROMPT, vocab);
  const parPrompts = new Map(
    o.parallel.map((n) => [n, Array.from({ length: n }, () => randomTokens(rng, o.parPrompt, vocab))]),
  );
  return { promptIds, genPrompt, parPrompts };
}

/** One line of the results table: a metric, Spindle's figure, llama.cpp's per thread count. */
interface Row {
  key: MetricKey;
  metric: string;
  spindle: number;
  llama: Map<number, number>;
}

function emptyRows(o: Options): Row[] {
  return [
    { key: "prompt", metric: `prompt tok/s (${o.promptTokens} tokens)`, spindle: 0, llama: new Map() },
    { key: "gen", metric: `gen tok/s, batch 1 (${o.genTokens} tokens)`, spindle: 0, llama: new Map() },
    ...o.parallel.map((n) => ({
      key: `par${n}`,
      metric: `gen tok/s, ${n} parallel (aggregate, ${o.parPrompt} + ${o.parTokens} steps)`,
      spindle: 0,
      llama: new Map<number, number>(),
    })),
  ];
}

async function measureSpindle(model: Model, o: Options, inputs: Inputs, rows: Row[]): Promise<void> {
  rows[0]!.spindle = await measure(o.repeats, () => spindlePrompt(model, inputs.promptIds));
  rows[1]!.spindle = await measure(o.repeats, () => spindleGen(model, inputs.genPrompt, o.genTokens));
  for (const [i, n] of o.parallel.entries())
    rows[2 + i]!.spindle = await measure(o.repeats, () =>
      spindleParallel(model, inputs.parPrompts.get(n)!, o.parTokens),
    );
}

async function measureLlamaCpp(o: Options, inputs: Inputs, rows: Row[]): Promise<void> {
  const m = await import("node-llama-cpp");
  const llama = await m.getLlama({ gpu: false, build: "never", logLevel: m.LlamaLogLevel.error });
  const lmodel = await llama.loadModel({ modelPath: o.path, gpuLayers: 0 });
  try {
    for (const t of o.threadList) {
      rows[0]!.llama.set(t, await measure(o.repeats, () => llamaPrompt(lmodel, t, inputs.promptIds)));
      // Batch 1 is the parallel measurement with one sequence: same timing rule.
      rows[1]!.llama.set(
        t,
        await measure(o.repeats, () => llamaParallel(lmodel, t, [inputs.genPrompt], o.genTokens - 1)),
      );
      for (const [i, n] of o.parallel.entries())
        rows[2 + i]!.llama.set(
          t,
          await measure(o.repeats, () => llamaParallel(lmodel, t, inputs.parPrompts.get(n)!, o.parTokens)),
        );
    }
  } finally {
    await lmodel.dispose();
    await llama.dispose();
  }
}

/** Native llama.cpp's figure for a metric in this run (--native), if it was measured. */
function nativeFigure(native: NativeFigures | undefined, key: MetricKey): number | undefined {
  return native === undefined
    ? undefined
    : key === "prompt"
      ? native.prompt
      : key === "gen"
        ? native.gen
        : native.par.get(Number(key.slice(3)));
}

/** node-llama-cpp's best thread count and rate per row. */
function bestLlama(rows: Row[], threadList: number[]): { threads: number; rate: number }[] {
  return rows.map((r) => {
    let bestT = threadList[0]!;
    for (const t of threadList) if (r.llama.get(t)! > r.llama.get(bestT)!) bestT = t;
    return { threads: bestT, rate: r.llama.get(bestT)! };
  });
}

function printResults(
  o: Options,
  rows: Row[],
  best: { threads: number; rate: number }[],
  native: NativeFigures | undefined,
): void {
  const nativeCols =
    native === undefined ? [] : [`native ${o.nativeThreads}t (this run)`, "Spindle / native"];
  printTable(
    [
      "metric",
      "Spindle",
      "llama.cpp (best)",
      "threads",
      "Spindle / llama.cpp",
      "llama.cpp per thread count",
      ...nativeCols,
    ],
    rows.map((r, i) => {
      const n = nativeFigure(native, r.key);
      return [
        r.metric,
        fmt(r.spindle),
        fmt(best[i]!.rate),
        String(best[i]!.threads),
        (r.spindle / best[i]!.rate).toFixed(2),
        o.threadList.map((t) => `${t}t: ${fmt(r.llama.get(t)!)}`).join(", "),
        ...(native === undefined ? [] : n === undefined ? ["—", "—"] : [fmt(n), (r.spindle / n).toFixed(2)]),
      ];
    }),
  );
  if (native !== undefined)
    console.log(`native: llama.cpp ${native.build}, ${o.nativeThreads} threads (--native)`);
}

/** The anchor for this file's shape and weights, the notes on how far it applies, and its targets judged. */
function judgeTargets(
  o: Options,
  shape: { dim: number; nLayers: number; vocab: number; weights: string },
  rows: Row[],
  best: { threads: number; rate: number }[],
  native: NativeFigures | undefined,
): { anchor: Anchor | undefined; targets: TargetResult[] } {
  const { dim, nLayers, vocab, weights } = shape;
  const anchor = ANCHORS.find((a) => a.dim === dim && a.layers === nLayers && a.weights === weights);
  const shapeOnly = ANCHORS.find((a) => a.dim === dim && a.layers === nLayers);
  console.log();
  if (!anchor) {
    console.log(
      shapeOnly
        ? `no native anchor: ${shapeOnly.name.split(" ")[0]} shape, but weights ${weights}`
        : `no native anchor: dim ${dim} × ${nLayers} layers is none of the issue's models`,
    );
    return { anchor, targets: [] };
  }
  if (!anchor.native) console.log(`no native anchor: ${anchor.name} has no native llama.cpp figures`);
  if (anchor.vocab !== vocab)
    console.log(`note: vocab ${vocab}, not ${anchor.name}'s ${anchor.vocab} (a synthesized shape?)`);
  const cond = anchor.parallelCondition;
  if (cond !== undefined && (cond[0] !== o.parPrompt || cond[1] !== o.parTokens))
    console.log(
      `note: the parallel anchor matches native llama.cpp at ${cond[0]} + ${cond[1]} tokens per sequence, ` +
        `this run measured ${o.parPrompt} + ${o.parTokens}: compare with --parallel-prompt ${cond[0]} ` +
        `--parallel-tokens ${cond[1]}, or against --native`,
    );
  const nativeRun = new Map<MetricKey, number>();
  for (const r of rows) {
    const n = nativeFigure(native, r.key);
    if (n !== undefined) nativeRun.set(r.key, n);
  }
  const targets = evaluateTargets(
    anchor,
    new Map(rows.map((r) => [r.key, r.spindle])),
    new Map(rows.map((r, i) => [r.key, best[i]!.rate])),
    native === undefined ? undefined : nativeRun,
  );
  console.log(`targets (${anchor.name}; ${ANCHOR_SOURCE}):`);
  const opt = (x: number | null, f: (x: number) => string) => (x === null ? "—" : f(x));
  const runCols = native === undefined ? [] : ["native (this run)", "ratio", "met"];
  printTable(
    ["target", "Spindle", "reference", "ratio", "met", ...runCols],
    targets.map((t) => [
      t.target,
      opt(t.spindle, fmt),
      `${opt(t.reference, fmt)} (${t.referenceIs})`,
      opt(t.ratio, (x) => x.toFixed(2)),
      verdict(t),
      ...(native === undefined
        ? []
        : t.thisRun === null
          ? ["—", "—", "—"]
          : [
              fmt(t.thisRun.native),
              opt(t.thisRun.ratio, (x) => x.toFixed(2)),
              t.thisRun.met === null ? "not measured" : t.thisRun.met ? "yes" : "NO",
            ]),
    ]),
  );
  return { anchor, targets };
}

function fmt(x: number): string {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/** A markdown table; the first column left-aligned, the others right-aligned. */
function printTable(header: string[], body: string[][]): void {
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`);
  for (const r of body) console.log(`| ${r.join(" | ")} |`);
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const o = parseOptions();
  if (o === undefined) return;
  // Found (or built) before the long measurements, so a missing tool fails at once.
  if (o.nativeDir !== undefined)
    o.nativeDir = dirname(
      (await llamaCppTools(NATIVE_TOOLS, { dir: o.nativeDir === "auto" ? undefined : o.nativeDir }))[
        "llama-bench"
      ],
    );
  // The WebAssembly kernels take their thread count from here when the model loads.
  process.env.SPINDLE_THREADS = String(o.spindleThreads);

  const model = loadModel(o.path);
  const kernels = model.transformer.kernels as { threads?: number; build?: string };
  const splits = await tuneSmallSplits(model);
  const { dim, nLayers, vocabSize: vocab } = model.config;
  const inputs = makeInputs(o, vocab, model.config.contextLength);
  const weights = weightsLabel(o.path);
  console.log(
    `model ${o.path}: ${nLayers} layers, dim ${dim}, vocab ${vocab}, weights ${weights}; ` +
      `Spindle kernels: ${model.transformer.kernels.name}${kernels.build ? ` ${kernels.build} build` : ""} (${kernels.threads ?? 1} thread(s), --spindle-threads${splits ? `; decode-sized matmuls ${splits.smallSplits ? "split" : "on one thread"}: step ${splits.splitMs.toFixed(2)} ms split vs ${splits.singleMs.toFixed(2)} ms not` : ""}); ` +
      `llama.cpp threads ${o.threadList.join(", ")} (--threads); repeats ${o.repeats}, median`,
  );

  const rows = emptyRows(o);
  await measureSpindle(model, o, inputs, rows);
  await measureLlamaCpp(o, inputs, rows);
  const native =
    o.nativeDir === undefined
      ? undefined
      : await benchNative(o.nativeDir, o.path, {
          threads: o.nativeThreads,
          promptTokens: o.promptTokens,
          genTokens: o.genTokens,
          parallel: o.parallel,
          parPrompt: o.parPrompt,
          parTokens: o.parTokens,
          repeats: o.repeats,
        });
  const best = bestLlama(rows, o.threadList);
  printResults(o, rows, best, native);
  const { anchor, targets } = judgeTargets(o, { dim, nLayers, vocab, weights }, rows, best, native);

  if (o.json) {
    const report = {
      model: { path: o.path, dim, layers: nLayers, vocab, weights },
      spindle: {
        kernels: model.transformer.kernels.name,
        build: kernels.build,
        threads: kernels.threads ?? 1,
        splits,
      },
      llamaThreads: o.threadList,
      repeats: o.repeats,
      metrics: rows.map((r, i) => ({
        key: r.key,
        metric: r.metric,
        spindle: r.spindle,
        llama: Object.fromEntries(r.llama),
        llamaBest: best[i]!.rate,
        llamaBestThreads: best[i]!.threads,
        ratio: r.spindle / best[i]!.rate,
        native: anchor?.native?.[r.key] ?? null,
        ratioToNative: anchor?.native?.[r.key] ? r.spindle / anchor.native[r.key]! : null,
        nativeThisRun: nativeFigure(native, r.key) ?? null,
        ratioToNativeThisRun: nativeFigure(native, r.key) ? r.spindle / nativeFigure(native, r.key)! : null,
      })),
      native: native === undefined ? null : { build: native.build, threads: o.nativeThreads },
      anchor: anchor ?? null,
      targets,
    };
    writeFileSync(o.json, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`\nwrote ${o.json}`);
  }
}

await main();
