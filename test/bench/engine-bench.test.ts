import { afterEach, describe, expect, it, vi } from "vitest";
import {
  benchEngine,
  type EngineBenchOptions,
  type EngineBenchResult,
} from "../../src/bench/engine-bench.js";
import { ModelRunner } from "../../src/engine/runner.js";
import type { BatchingMode } from "../../src/engine/scheduler.js";
import { SimRunner } from "../../src/engine/sim-runner.js";
import { SpindleError } from "../../src/errors.js";
import { loadModel } from "../../src/model/model.js";
import { runCli } from "../helpers/cli.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/**
 * The in-process engine benchmark. With a SimRunner time is virtual (each step costs what the cost
 * model says), so results are exact and the same on every machine; with the real runner only what
 * the scheduler guarantees structurally is checked, never how fast this machine is.
 */

const MODES: BatchingMode[] = ["continuous", "static", "window"];

afterEach(() => vi.restoreAllMocks());

/** What holds for any run: every request done, every token counted, the means consistent. */
function expectConsistent(r: EngineBenchResult, o: EngineBenchOptions, label: string) {
  expect(r.requests, label).toBe(o.requests);
  // stopAtEog is off, so every request runs to max_tokens.
  expect(r.outputTokens, label).toBe(o.requests * o.maxTokens);
  expect(r.seconds, label).toBeGreaterThan(0);
  expect(r.outputTokPerSec / (r.outputTokens / r.seconds), label).toBeCloseTo(1, 12);
  expect(r.meanBatch, label).toBeGreaterThanOrEqual(1);
  expect(r.meanBatch, label).toBeLessThanOrEqual(o.concurrency);
  expect(r.steps, label).toBeGreaterThan(0);
  expect(r.ttftMs, label).toHaveLength(o.requests);
  for (const t of r.ttftMs) expect(Number.isFinite(t) && t >= 0, label).toBe(true);
  const mean = r.ttftMs.reduce((s, t) => s + t, 0) / r.ttftMs.length;
  expect(r.meanTtftMs / mean, label).toBeCloseTo(1, 9);
  expect(r.meanLatencyMs, label).toBeGreaterThanOrEqual(r.meanTtftMs);
  expect(r.meanLatencyMs, label).toBeLessThanOrEqual(r.seconds * 1000 + 1e-9);
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

describe("benchEngine with the simulated runner (virtual time)", () => {
  const V = 512;
  const sim = () => new SimRunner({ numBlocks: 256, vocabSize: V });
  // Prompts of 32 tokens against a budget of 64 tokens a step: 8 clients cannot all prefill in the
  // first step, so requests finish at different steps and the modes really differ.
  const engineOpts = (batching: BatchingMode) => ({ batching, maxNumBatchedTokens: 64, batchWindowMs: 20 });
  const opts = (concurrency: number): EngineBenchOptions => ({
    concurrency,
    requests: 2 * concurrency,
    promptTokens: 32,
    maxTokens: 16,
    vocabSize: V,
  });

  it("counts add up in every mode at concurrency 1 and 8", async () => {
    for (const c of [1, 8]) {
      for (const mode of MODES) {
        const r = await benchEngine(sim(), engineOpts(mode), opts(c));
        expectConsistent(r, opts(c), `${mode} @${c}`);
        if (c === 1) expect(r.meanBatch, mode).toBe(1);
      }
    }
  });

  it("is deterministic: virtual time, not this machine's speed", async () => {
    for (const mode of MODES) {
      const a = await benchEngine(sim(), engineOpts(mode), opts(8));
      const b = await benchEngine(sim(), engineOpts(mode), opts(8));
      expect(a, mode).toEqual(b);
    }
  });

  it("at concurrency 8 continuous batching batches, and static mode makes late requests wait", async () => {
    const o = opts(8);
    const cont = await benchEngine(sim(), engineOpts("continuous"), o);
    const stat = await benchEngine(sim(), engineOpts("static"), o);
    expect(cont.meanBatch).toBeGreaterThan(1);
    // The first 8 requests arrive together and get their first tokens, a prefill chunk at a time, in
    // the same steps in both modes. A later one arrives when its client's first request finishes:
    // continuous mode admits it at the next step, static mode only once the whole first batch is done
    // (and the first batch finishes staggered, because its prefills were).
    expect(stat.ttftMs.slice(0, 8)).toEqual(cont.ttftMs.slice(0, 8));
    expect(mean(stat.ttftMs.slice(8))).toBeGreaterThan(mean(cont.ttftMs.slice(8)));
  });

  it("window mode waits out the window (in virtual time) before admitting", async () => {
    const r = await benchEngine(sim(), engineOpts("window"), opts(1));
    for (const t of r.ttftMs) expect(t).toBeGreaterThanOrEqual(20);
    const cont = await benchEngine(sim(), engineOpts("continuous"), opts(1));
    for (const [i, t] of r.ttftMs.entries()) expect(t).toBeCloseTo(cont.ttftMs[i]! + 20, 9);
  });

  it("refuses options that would send nothing", async () => {
    await expect(benchEngine(sim(), {}, { ...opts(1), concurrency: 0 })).rejects.toThrow(SpindleError);
    await expect(benchEngine(sim(), {}, { ...opts(1), requests: 0 })).rejects.toThrow(SpindleError);
  });
});

describe("benchEngine with the real runner (stories260K)", () => {
  const model = loadModel(testModel(STORIES_260K));
  const o: EngineBenchOptions = {
    concurrency: 4,
    requests: 8,
    promptTokens: 16,
    maxTokens: 8,
    vocabSize: model.config.vocabSize,
  };

  it("counts add up; batches are as the scheduler makes them", async () => {
    for (const batching of MODES) {
      const r = await benchEngine(
        new ModelRunner(model, 64),
        { batching, batchWindowMs: 5, tokenizer: model.tokenizer },
        o,
      );
      expectConsistent(r, o, batching);
      // Four 16-token prompts fit one step's budget, so each wave of four is one prefill step
      // (which samples the first token) and seven decode steps, all four together, in every mode.
      expect(r.steps, batching).toBe(16);
      expect(r.meanBatch, batching).toBe(4);
      // Window mode admits a wave only once its oldest request has waited the 5 ms window.
      if (batching === "window") for (const t of r.ttftMs) expect(t).toBeGreaterThanOrEqual(5);
    }
  });
});

describe("spindle bench-engine", () => {
  it("prints one row per (concurrency, mode, KV cache type) with a ratio to the first", async () => {
    const r = await runCli([
      "bench-engine",
      "--model",
      "stories260K",
      "--concurrency",
      "1,4",
      "--requests-per-client",
      "1",
      "--max-tokens",
      "8",
      "--kv-cache-type",
      "f16,f32",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    const kv = lines[0]!.match(/^model .*prompt 32, output 8 tokens, KV ([\d.]+) MiB f16, ([\d.]+) MiB f32$/);
    expect(kv, lines[0]).not.toBeNull();
    expect(Number(kv![2])).toBeCloseTo(2 * Number(kv![1]), 0); // f16: half the bytes of the same blocks
    expect(lines[1]).toMatch(/^concurrency\s+mode\s+kv\s+requests\s+out tok\/s\s+vs first\s+mean TTFT ms/);
    const rows = lines.slice(2).map((l) => {
      const m = l.match(
        /^\s*(\d+)\s+(\w+)\s+(f16|f32)\s+(\d+)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)\s+(\d+)\s+([\d.]+)$/,
      );
      expect(m, l).not.toBeNull();
      return {
        c: Number(m![1]),
        mode: m![2],
        kv: m![3],
        requests: Number(m![4]),
        tps: Number(m![5]),
        ratio: Number(m![6]),
      };
    });
    expect(rows.map((x) => [x.c, x.mode, x.kv])).toEqual(
      [1, 4].flatMap((c) =>
        ["continuous", "static", "window"].flatMap((mode) => ["f16", "f32"].map((kv) => [c, mode, kv])),
      ),
    );
    for (const c of [1, 4]) {
      const group = rows.filter((x) => x.c === c);
      expect(group[0]!.ratio).toBe(1);
      for (const x of group) {
        // One request per client; the ratio is this mode's throughput over the first mode's.
        expect(x.requests).toBe(c);
        expect(Math.abs(x.ratio - x.tps / group[0]!.tps)).toBeLessThan(0.01 + 0.1 / group[0]!.tps);
      }
    }
  });
});
