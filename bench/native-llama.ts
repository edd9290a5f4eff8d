import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { percentile } from "../src/bench/metrics.js";
import { toolsIn } from "./llama-cpp-build.js";

/**
 * Native llama.cpp's own benchmark tools, run on the same model file as Spindle, so that
 * `npm run bench:vs-llamacpp` can print ratios against native llama.cpp measured in the same run (the machine's
 * slow and calm phases then move both sides) rather than only against figures measured once.
 *
 * `dir` holds `llama-bench` and `llama-batched-bench` as built from llama.cpp's sources (CPU,
 * `cmake -DGGML_NATIVE=ON`; node-llama-cpp's npm package carries those sources as a git bundle:
 * llama-cpp-build.ts finds or builds them). Nothing here is needed by the server or the tests.
 *
 *  - prompt and batch-1 generation: `llama-bench -p P -n N`, average tok/s of its `repeats` runs;
 *  - N parallel: `llama-batched-bench -npp 16 -ntg T -npl N`: N sequences each prefilled with 16
 *    tokens, then T decode steps of all N together; speed_tg = N·T / decode time, the median of
 *    `repeats` runs. The same definition as Spindle's parallel figure, except that llama.cpp feeds
 *    random tokens instead of sampling them (Spindle also pays for its greedy sampling).
 */

const run = promisify(execFile);

export interface NativeOptions {
  threads: number;
  promptTokens: number;
  genTokens: number;
  parallel: readonly number[];
  parPrompt: number;
  parTokens: number;
  repeats: number;
}

export interface NativeFigures {
  /** llama.cpp's build as llama-bench reports it, e.g. "b1 (80fb11a)" for node-llama-cpp's bundle. */
  build: string;
  prompt: number;
  gen: number;
  /** Aggregate decode tok/s per parallel sequence count. */
  par: Map<number, number>;
}

export const NATIVE_TOOLS = ["llama-bench", "llama-batched-bench"] as const;

/** The tools' paths in `dir`, or an error naming what is missing. */
export function nativeTools(dir: string): Record<(typeof NATIVE_TOOLS)[number], string> {
  return toolsIn(dir, NATIVE_TOOLS);
}

interface LlamaBenchEntry {
  n_prompt: number;
  n_gen: number;
  avg_ts: number;
  build_commit?: string;
  build_number?: number;
}

/** Parses `llama-bench -o json`: the prompt and generation rates and the build. */
export function parseLlamaBench(stdout: string): { prompt: number; gen: number; build: string } {
  const entries = JSON.parse(stdout) as LlamaBenchEntry[];
  const prompt = entries.find((e) => e.n_prompt > 0 && e.n_gen === 0);
  const gen = entries.find((e) => e.n_gen > 0 && e.n_prompt === 0);
  if (!prompt || !gen) throw new Error("llama-bench printed no prompt or no generation result");
  const first = entries[0]!;
  return { prompt: prompt.avg_ts, gen: gen.avg_ts, build: `b${first.build_number} (${first.build_commit})` };
}

/** Parses `llama-batched-bench --output-format jsonl`: speed_tg per parallel count (pl). */
export function parseBatchedBench(stdout: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const line of stdout.split("\n")) {
    if (!line.startsWith("{")) continue;
    const r = JSON.parse(line) as { pl: number; speed_tg: number };
    out.set(r.pl, r.speed_tg);
  }
  return out;
}

/** Runs both tools on `model` with `o.threads` threads and returns their figures. */
export async function benchNative(dir: string, model: string, o: NativeOptions): Promise<NativeFigures> {
  const tools = nativeTools(dir);
  const t = String(o.threads);
  const benchArgs = ["-m", model, "-t", t, "-p", `${o.promptTokens}`, "-n", `${o.genTokens}`];
  benchArgs.push("-r", `${o.repeats}`, "-o", "json");
  const bench = await run(tools["llama-bench"], benchArgs, { maxBuffer: 16 << 20 });
  const { prompt, gen, build } = parseLlamaBench(bench.stdout);
  // llama.cpp logs through a thread that is not always drained at exit: under execFile the last
  // result line is sometimes lost (seen on stories260K, most often with the machine busy). The
  // counts left without a line are run again, three tries in all.
  const samples = new Map<number, number[]>(o.parallel.map((n) => [n, []]));
  const ctx = Math.max(...o.parallel) * (o.parPrompt + o.parTokens);
  for (let i = 0; i < o.repeats && o.parallel.length > 0; i++) {
    let missing = [...o.parallel];
    for (let attempt = 0; attempt < 3 && missing.length > 0; attempt++) {
      const args = ["-m", model, "-t", t, "-tb", t, "-c", `${ctx}`, "-b", "2048", "-ub", "512"];
      args.push("-npp", `${o.parPrompt}`, "-ntg", `${o.parTokens}`, "-npl", missing.join(","));
      args.push("--output-format", "jsonl");
      const got = parseBatchedBench(
        (await run(tools["llama-batched-bench"], args, { maxBuffer: 16 << 20 })).stdout,
      );
      for (const [n, x] of got) samples.get(n)?.push(x);
      missing = missing.filter((n) => !got.has(n));
    }
    if (missing.length > 0)
      throw new Error(`llama-batched-bench printed no result for ${missing.join(", ")} parallel sequences`);
  }
  const par = new Map([...samples].map(([n, xs]) => [n, percentile(xs, 50)]));
  return { build, prompt, gen, par };
}
