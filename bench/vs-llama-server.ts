import { execFile } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs, promisify } from "node:util";
import { type BenchConfig, type RunResult, runBench } from "../src/bench/bench.js";
import { percentile } from "../src/bench/metrics.js";
import { alignTable } from "../src/bench/report.js";
import type { WorkloadSpec } from "../src/bench/workload.js";
import { readGGUF } from "../src/gguf/reader.js";
import { GGMLType } from "../src/gguf/types.js";
import { configFromGGUF } from "../src/model/config.js";
import { KVCacheStorage } from "../src/model/kv-cache.js";
import { cacheDir, resolveModel } from "../src/model/resolve.js";
import { SHAPES, synthModel } from "../src/model/synth.js";
import { llamaCppTools } from "./llama-cpp-build.js";
import { type StartedServer, startServer, startSpindle } from "./servers.js";

/**
 * `npm run bench:vs-llama-server`: Spindle against llama.cpp's own HTTP server on the same GGUF, the
 * side-by-side targets of issue 18 §5. Both servers run at once, each with `--threads` threads and
 * the same KV capacity in tokens (`--kv-tokens`: Spindle's pool of 16-token blocks, llama-server's
 * unified KV cache of that many cells, every sequence free to use the model's context); the same
 * workloads go to each through `spindle bench`'s client (runBench: streaming /v1/completions,
 * exact prompt lengths from the first server's /tokenize, ignore_eos for exact output lengths),
 * the same prompts to both within a round, the order flipped every round (Spindle first in odd
 * rounds, llama-server first in even ones) so the machine's slow phases hit both sides. Figures are
 * medians over the rounds, with their min–max printed as the noise; ratios are Spindle / llama-server
 * per round, then their median:
 *
 *   c16, c32  16 and 32 concurrent streams: aggregate output tok/s (≥ 1.2×), median TPOT (≤ 1×)
 *   c1        1 stream: median TTFT (≤ 1×), decode tok/s = 1000 / median TPOT (≥ 1×)
 *   shared    16 streams over `--groups` shared prefixes of `--prefix-len` tokens (primed once per
 *             server and round): p99 TTFT ≤ 2 s, p99 TPOT ≤ 100 ms, output tok/s ≥ 1×
 *   copy      1 stream, each prompt a passage written 3 times (`spindle bench --workload copy`), for
 *             speculative decoding (`--spindle-args="--speculative ngram"`): output tok/s ≥ 2×;
 *             with `--copier`, on the same shape written as a model that copies its prompt
 *             (synth-model --copier), since random weights never do and so never draft
 *
 * llama-server is `--llama-server PATH`, or built once from the llama.cpp sources node-llama-cpp
 * carries and cached in ~/.cache/spindle/llama.cpp (llama-cpp-build.ts). The default model is a
 * synthesized SmolLM2-135M-shape Q8_0 file with the 32,000-token Llama SentencePiece vocabulary,
 * written once into the model cache. Only measures; nothing here is part of the product.
 */

const USAGE = `usage: npm run bench:vs-llama-server -- [--model FILE.gguf | --copier] [--rounds 3] [--requests 64]
           [--threads 2] [--kv-tokens 16384] [--input-len 105] [--output-len 128]
           [--prefix-len 412] [--suffix-len 32] [--groups 4] [--workloads c16,c32,c1,shared]
           [--llama-server PATH] [--llama-args="--poll 0"] [--spindle-args="--speculative ngram"]
           [--seed 1] [--temperature 0] [--json OUT]

--requests: per run of the 16/32-stream and shared-prefix workloads; the 1-stream run sends a
quarter of them (at least 2). Small settings for a quick look: --rounds 2 --requests 32 --output-len 32.
--temperature: above 0, both servers sample from the whole distribution (top_k 0, top_p 1, min_p 0
sent too, since llama-server would otherwise cut to its default top 40).`;

const run = promisify(execFile);

type WorkloadName = "c16" | "c32" | "c1" | "shared" | "copy";
const WORKLOADS: readonly WorkloadName[] = ["c16", "c32", "c1", "shared", "copy"];

interface Options {
  model: string | undefined;
  /** The default model written as a copier (synth-model --copier). */
  copier: boolean;
  rounds: number;
  requests: number;
  threads: number;
  kvTokens: number;
  inputLen: number;
  outputLen: number;
  prefixLen: number;
  suffixLen: number;
  groups: number;
  workloads: WorkloadName[];
  llamaServer: string | undefined;
  /** More llama-server arguments, e.g. "--poll 0". */
  llamaArgs: string[];
  /** More Spindle arguments, e.g. "--speculative ngram". */
  spindleArgs: string[];
  seed: number;
  temperature: number;
  json: string | undefined;
}

function parseOptions(): Options | undefined {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      copier: { type: "boolean" },
      rounds: { type: "string", default: "3" },
      requests: { type: "string", default: "64" },
      threads: { type: "string", default: "2" },
      "kv-tokens": { type: "string", default: "16384" },
      "input-len": { type: "string", default: "105" },
      "output-len": { type: "string", default: "128" },
      "prefix-len": { type: "string", default: "412" },
      "suffix-len": { type: "string", default: "32" },
      groups: { type: "string", default: "4" },
      workloads: { type: "string", default: WORKLOADS.join(",") },
      "llama-server": { type: "string" },
      "llama-args": { type: "string" },
      "spindle-args": { type: "string" },
      seed: { type: "string", default: "1" },
      temperature: { type: "string", default: "0" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return undefined;
  }
  const int = (name: string, v: string, min = 1) => {
    const n = Number(v);
    if (!(Number.isInteger(n) && n >= min))
      throw new Error(`--${name} must be an integer ≥ ${min}, got "${v}"`);
    return n;
  };
  const temperature = Number(values.temperature);
  if (!(temperature >= 0)) throw new Error(`--temperature must be a number ≥ 0, got "${values.temperature}"`);
  const workloads = values.workloads!.split(",").map((w) => w.trim()) as WorkloadName[];
  for (const w of workloads)
    if (!WORKLOADS.includes(w)) throw new Error(`--workloads: unknown "${w}" (${WORKLOADS.join(", ")})`);
  return {
    model: values.model === undefined ? undefined : resolve(values.model),
    copier: values.copier === true,
    rounds: int("rounds", values.rounds!),
    requests: int("requests", values.requests!),
    threads: int("threads", values.threads!),
    kvTokens: int("kv-tokens", values["kv-tokens"]!, 16),
    inputLen: int("input-len", values["input-len"]!),
    outputLen: int("output-len", values["output-len"]!, 2),
    prefixLen: int("prefix-len", values["prefix-len"]!),
    suffixLen: int("suffix-len", values["suffix-len"]!),
    groups: int("groups", values.groups!),
    workloads,
    llamaServer: values["llama-server"],
    llamaArgs: values["llama-args"]?.split(/\s+/).filter((a) => a.length > 0) ?? [],
    spindleArgs: values["spindle-args"]?.split(/\s+/).filter((a) => a.length > 0) ?? [],
    seed: int("seed", values.seed!, 0),
    temperature,
    json: values.json,
  };
}

/**
 * The default model: SmolLM2-135M's shape, Q8_0, the 32,000-token Llama vocabulary, random weights or
 * (`copier`) the induction circuit that copies its prompt; written once.
 */
function defaultModel(copier: boolean): string {
  const path = join(cacheDir(), `synth-smollm2-135m-q8_0-llama-spm${copier ? "-copier" : ""}.gguf`);
  if (existsSync(path)) return path;
  mkdirSync(dirname(path), { recursive: true });
  process.stderr.write(`synthesizing the default model into ${path} (once)\n`);
  synthModel({
    arch: "llama",
    shape: SHAPES["smollm2-135m"]!,
    type: GGMLType.Q8_0,
    vocabPath: resolveModel("vocab/ggml-vocab-llama-spm.gguf"),
    out: path,
    seed: 1,
    copier,
  });
  return path;
}

/** One workload: its load (closed-loop concurrency), prompts and request count. */
function workloadOf(o: Options, w: WorkloadName): { concurrency: number; spec: WorkloadSpec; n: number } {
  const random = (c: number, n: number) => ({
    concurrency: c,
    n,
    spec: { kind: "random", inputLen: o.inputLen, outputLen: o.outputLen, rangeRatio: 0 } as WorkloadSpec,
  });
  if (w === "c16") return random(16, o.requests);
  if (w === "c32") return random(32, o.requests);
  if (w === "c1") return random(1, Math.max(2, Math.round(o.requests / 4)));
  if (w === "copy")
    return {
      concurrency: 1,
      n: Math.max(2, Math.round(o.requests / 4)),
      spec: { kind: "copy", inputLen: o.inputLen, outputLen: o.outputLen, rangeRatio: 0, copies: 3 },
    };
  return {
    concurrency: 16,
    n: o.requests,
    spec: {
      kind: "shared-prefix",
      groups: o.groups,
      promptsPerGroup: Math.ceil(o.requests / o.groups),
      prefixLen: o.prefixLen,
      suffixLen: o.suffixLen,
      outputLen: o.outputLen,
      scenario: "hit",
    },
  };
}

/** What one run of a workload measured on one server. */
interface Figures {
  outTokS: number;
  tpotMedianMs: number;
  ttftMedianMs: number;
  ttftP99Ms: number;
  tpotP99Ms: number;
  /** Batch-1 decode rate: 1000 / median TPOT. */
  decodeTokS: number;
  failed: number;
  /** Failure reason → count. */
  errors: Record<string, number>;
}

function figuresOf(r: RunResult): Figures {
  const m = r.metrics;
  return {
    outTokS: m.outputThroughput,
    tpotMedianMs: m.tpot.median,
    ttftMedianMs: m.ttft.median,
    ttftP99Ms: m.ttft.p99,
    tpotP99Ms: m.tpot.p99,
    decodeTokS: 1000 / m.tpot.median,
    failed: m.failed,
    errors: m.errors,
  };
}

type Side = "spindle" | "llama";

/** A row of the table: which figure, which way is better, the target. */
interface Row {
  workload: WorkloadName;
  metric: string;
  pick: (f: Figures) => number;
  /** "ratio": Spindle / llama-server against `target` (≥ for higher-is-better, ≤ otherwise). */
  higherIsBetter: boolean;
  target: { kind: "ratio"; value: number } | { kind: "absolute"; value: number; unit: string };
}

const ROWS: Row[] = [
  ...(["c16", "c32"] as const).flatMap((w): Row[] => [
    {
      workload: w,
      metric: "output tok/s",
      pick: (f) => f.outTokS,
      higherIsBetter: true,
      target: { kind: "ratio", value: 1.2 },
    },
    {
      workload: w,
      metric: "median TPOT ms",
      pick: (f) => f.tpotMedianMs,
      higherIsBetter: false,
      target: { kind: "ratio", value: 1 },
    },
  ]),
  {
    workload: "c1",
    metric: "median TTFT ms",
    pick: (f) => f.ttftMedianMs,
    higherIsBetter: false,
    target: { kind: "ratio", value: 1 },
  },
  {
    workload: "c1",
    metric: "decode tok/s",
    pick: (f) => f.decodeTokS,
    higherIsBetter: true,
    target: { kind: "ratio", value: 1 },
  },
  {
    workload: "copy",
    metric: "output tok/s",
    pick: (f) => f.outTokS,
    higherIsBetter: true,
    target: { kind: "ratio", value: 2 },
  },
  {
    workload: "shared",
    metric: "p99 TTFT ms",
    pick: (f) => f.ttftP99Ms,
    higherIsBetter: false,
    target: { kind: "absolute", value: 2000, unit: "ms" },
  },
  {
    workload: "shared",
    metric: "p99 TPOT ms",
    pick: (f) => f.tpotP99Ms,
    higherIsBetter: false,
    target: { kind: "absolute", value: 100, unit: "ms" },
  },
  {
    workload: "shared",
    metric: "output tok/s",
    pick: (f) => f.outTokS,
    higherIsBetter: true,
    target: { kind: "ratio", value: 1 },
  },
];

const fmt = (x: number) =>
  !Number.isFinite(x) ? "nan" : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
const median = (xs: number[]) => percentile(xs, 50);
const spread = (xs: number[]) =>
  xs.length > 1 ? `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})` : fmt(xs[0]!);

/** The table: per metric, each side's median (min–max), the median per-round ratio, the target. */
function table(o: Options, results: Map<WorkloadName, Record<Side, Figures[]>>): string {
  const head = ["workload", "metric", "llama-server", "Spindle", "Spindle / llama-server", "target", "met"];
  const rows: string[][] = [head];
  for (const r of ROWS) {
    const res = results.get(r.workload);
    if (!res || res.spindle.length === 0) continue;
    const s = res.spindle.map(r.pick);
    const l = res.llama.map(r.pick);
    const ratios = s.map((x, i) => x / l[i]!);
    const ratio = median(ratios);
    let target: string;
    let met: boolean;
    if (r.target.kind === "ratio") {
      target = `${r.higherIsBetter ? "≥" : "≤"} ${r.target.value}×`;
      met = r.higherIsBetter ? ratio >= r.target.value : ratio <= r.target.value;
    } else {
      target = `Spindle ≤ ${r.target.value} ${r.target.unit}`;
      met = median(s) <= r.target.value;
    }
    const label =
      r.workload === "c1"
        ? "1 stream"
        : r.workload === "copy"
          ? `copy, 1 stream${o.spindleArgs.length > 0 ? ` (${o.spindleArgs.join(" ")})` : ""}`
          : r.workload === "shared"
            ? `shared prefix ${o.prefixLen}, 16 streams`
            : `${r.workload.slice(1)} streams`;
    rows.push([label, r.metric, spread(l), spread(s), spread(ratios), target, met ? "yes" : "no"]);
  }
  return alignTable(rows);
}

async function main(): Promise<number> {
  const o = parseOptions();
  if (!o) return 0;
  if (o.model !== undefined && o.copier)
    throw new Error("--copier writes the default model; not with --model");
  const model = o.model ?? defaultModel(o.copier);
  const llamaServer = o.llamaServer ?? (await llamaCppTools(["llama-server"]))["llama-server"];
  const llamaVersion = await run(llamaServer, ["--version"])
    .then((r) => `${r.stdout}${r.stderr}`.match(/version: [^\n]+/)?.[0] ?? "unknown version")
    .catch(() => "unknown version");
  const maxC = Math.max(...o.workloads.map((w) => workloadOf(o, w).concurrency));
  const blocks = Math.ceil(o.kvTokens / 16);
  const servers: StartedServer[] = [];
  const load0 = loadavg()[0]!;
  const t0 = performance.now();
  const results = new Map<WorkloadName, Record<Side, Figures[]>>();
  try {
    const spindle = await startSpindle("Spindle", [
      "--model",
      model,
      "--threads",
      String(o.threads),
      // Exactly `blocks` blocks of 16 tokens: the budget in bytes of that many tokens.
      "--kv-cache-memory",
      String(KVCacheStorage.bytesPerToken(configFromGGUF(readGGUF(model))) * blocks * 16),
      "--max-num-seqs",
      String(Math.max(64, maxC)),
      // Never measured in the background: an idle Spindle re-measuring its decode split would take
      // CPU from llama-server's runs. On: what the measurement chose on every file here.
      "--decode-split",
      "on",
      ...o.spindleArgs,
    ]);
    servers.push(spindle);
    // -kvu: one KV buffer for every slot, as Spindle's pool is; -np: a slot per concurrent stream.
    const ls = await startServer(
      "llama-server",
      llamaServer,
      [
        ...["-m", model, "--host", "127.0.0.1", "--port", "{port}"],
        ...["-t", String(o.threads), "-tb", String(o.threads)],
        ...["-c", String(blocks * 16), "-kvu", "-np", String(maxC), "--no-webui"],
        ...o.llamaArgs,
      ],
      { quiet: true },
    );
    servers.push(ls);
    const urls: Record<Side, string> = { spindle: spindle.url, llama: ls.url };
    console.log(
      `model ${model}; ${o.threads} threads each; KV ${blocks * 16} tokens each; llama-server ${llamaVersion}; ` +
        `${o.rounds} rounds, order flipped each round; load average at start ${load0.toFixed(1)}`,
    );

    for (let round = 0; round < o.rounds; round++) {
      for (const [wi, w] of o.workloads.entries()) {
        const { concurrency, spec, n } = workloadOf(o, w);
        const order: Side[] = round % 2 === 0 ? ["spindle", "llama"] : ["llama", "spindle"];
        const cfg: BenchConfig = {
          targets: order.map((side) => ({
            label: side,
            baseUrl: urls[side],
            api: "completions",
            apiKeys: [],
          })),
          shapes: [{ kind: "closed", concurrency }],
          workload: spec,
          numPrompts: n,
          maxSeconds: 1800,
          // No warm-up requests: runBench gives up on a target whose warm-up all fails, and
          // llama-server fails some requests on synthesized (random-weight) models' output ("does
          // not match the expected Content-only format"); failures are counted and shown instead.
          warmup: 0,
          // The same prompts to both servers within a round, new ones every round (prefix caches).
          seed: o.seed * 1000 + round * 10 + wi,
          ignoreEos: true,
          temperature: o.temperature,
          ...(o.temperature > 0 ? { extraBody: { top_k: 0, top_p: 1, min_p: 0 } } : {}),
          rounds: 1,
          graceMs: 0,
          metricsIntervalMs: 0,
          serverMetrics: false,
          tokenize: true,
        };
        const res = await runBench(cfg);
        const got = results.get(w) ?? { spindle: [], llama: [] };
        for (const r of res.runs) got[r.target as Side].push(figuresOf(r));
        results.set(w, got);
        const line = res.runs
          .map((r) => {
            const f = figuresOf(r);
            return `${r.target}: ${fmt(f.outTokS)} out tok/s, TTFT p50 ${fmt(f.ttftMedianMs)} p99 ${fmt(f.ttftP99Ms)} ms, TPOT p50 ${fmt(f.tpotMedianMs)} p99 ${fmt(f.tpotP99Ms)} ms${f.failed ? `, ${f.failed} FAILED (${JSON.stringify(f.errors)})` : ""}`;
          })
          .join("; ");
        console.log(`round ${round + 1} ${w} (c=${concurrency}, ${n} requests): ${line}`);
      }
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
  const load1 = loadavg()[0]!;
  console.log(
    `\nmedians of ${o.rounds} interleaved rounds (min–max); ratio = Spindle / llama-server per round, median (min–max)`,
  );
  console.log(table(o, results));
  console.log(
    `${((performance.now() - t0) / 1000).toFixed(0)} s; load average ${load0.toFixed(1)} at start, ${load1.toFixed(1)} at end (the machine's other work moves both sides)`,
  );
  if (o.json) {
    writeFileSync(
      o.json,
      `${JSON.stringify({ options: { ...o, model }, llamaServer: llamaVersion, results: Object.fromEntries(results) }, null, 2)}\n`,
    );
  }
  return 0;
}

process.exitCode = await main();
