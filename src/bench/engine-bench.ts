import { EngineCore, type EngineOptions, realClock } from "../engine/engine.js";
import type { Runner } from "../engine/runner.js";
import { Rng } from "../sampling/rng.js";

/**
 * In-process engine benchmark: closed-loop clients against one EngineCore, no
 * HTTP, so batching modes and policies can be compared on the engine alone.
 * Each of `concurrency` clients keeps one request in flight and sends the next
 * as soon as the previous finishes, until `requests` have been sent.
 */

export interface EngineBenchOptions {
  concurrency: number;
  requests: number;
  promptTokens: number;
  maxTokens: number;
  vocabSize: number;
  seed?: number;
}

export interface EngineBenchResult {
  requests: number;
  outputTokens: number;
  seconds: number;
  outputTokPerSec: number;
  meanTtftMs: number;
  meanLatencyMs: number;
  meanBatch: number;
  steps: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function benchEngine(
  runner: Runner,
  engineOpts: EngineOptions,
  o: EngineBenchOptions,
): Promise<EngineBenchResult> {
  const engine = new EngineCore(runner, { ...engineOpts, clock: realClock, prefixCaching: false });
  const rng = new Rng(o.seed ?? 1);
  let sent = 0;
  const next = () => {
    const prompt = Array.from({ length: o.promptTokens }, () => 3 + (rng.nextU32() % (o.vocabSize - 3)));
    engine.add({
      id: `b${sent++}`,
      prompt,
      maxTokens: o.maxTokens,
      stopAtEog: false,
      sampling: { temperature: 0 },
    });
  };
  const t0 = performance.now();
  for (let c = 0; c < Math.min(o.concurrency, o.requests); c++) next();
  let outputTokens = 0;
  let ttft = 0;
  let latency = 0;
  let done = 0;
  let batchSum = 0;
  let steps = 0;
  while (engine.hasWork()) {
    const wake = engine.nextWakeup();
    if (wake !== undefined) {
      await sleep(Math.max(0, wake - performance.now()));
      continue;
    }
    for (const e of engine.step()) {
      outputTokens += e.tokens.length;
      if (e.finish) {
        done++;
        ttft += e.finish.times.firstToken! - e.finish.times.arrival;
        latency += e.finish.times.finished! - e.finish.times.arrival;
        if (sent < o.requests) next();
      }
    }
    if (engine.lastStep.batchSize > 0) {
      batchSum += engine.lastStep.batchSize;
      steps++;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  return {
    requests: done,
    outputTokens,
    seconds,
    outputTokPerSec: outputTokens / seconds,
    meanTtftMs: ttft / done,
    meanLatencyMs: latency / done,
    meanBatch: batchSum / Math.max(1, steps),
    steps,
  };
}
