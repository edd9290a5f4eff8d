import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { percentile } from "./metrics.js";

/**
 * Native llama.cpp's own benchmark tools, run on the same model file as Spindle, so that
 * `bench:engine` can print ratios against native llama.cpp measured in the same run (the machine's
 * slow and calm phases then move both sides) rather than only against figures measured once.
 *
 * `dir` holds `llama-bench` and `llama-batched-bench` as built from llama.cpp's sources (CPU,
 * `cmake -DGGML_NATIVE=ON`; node-llama-cpp's npm package carries those sources as a git bundle, see
 * docs/benchmarks.md). Nothing here is needed by the server or the tests.
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

const TOOLS = ["llama-bench", "llama-batched-bench"] as const;

/** The tools' paths in `dir`, or an error naming what is missing. */
export function nativeTools(dir: string): Record<(typeof TOOLS)[number], string> {
  const paths = Object.fromEntries(TOOLS.map((t) => [t, join(dir, t)])) as Record<
    (typeof TOOLS)[number],
    string
  >;
  const missing = TOOLS.filter((t) => !existsSync(paths[t]));
  if (missing.length > 0) throw new Error(`--native ${dir}: no ${missing.join(" or ")} there`);
  return paths;
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
  const par = new Map<number, number>();
  if (o.parallel.length > 0) {
    const maxPl = Math.max(...o.parallel);
    const ctx = maxPl * (o.parPrompt + o.parTokens);
    const runs: Map<number, number>[] = [];
    const args = ["-m", model, "-t", t, "-tb", t, "-c", `${ctx}`, "-b", "2048", "-ub", "512"];
    args.push("-npp", `${o.parPrompt}`, "-ntg", `${o.parTokens}`, "-npl", o.parallel.join(","));
    args.push("--output-format", "jsonl");
    for (let i = 0; i < o.repeats; i++) {
      const r = await run(tools["llama-batched-bench"], args, { maxBuffer: 16 << 20 });
      runs.push(parseBatchedBench(r.stdout));
    }
    for (const n of o.parallel) {
      const xs = runs.map((m) => m.get(n)).filter((x): x is number => x !== undefined);
      if (xs.length > 0) par.set(n, percentile(xs, 50));
    }
  }
  return { build, prompt, gen, par };
}
