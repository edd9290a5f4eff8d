import { type Clock, EngineCore, type EngineOptions, realClock, VirtualClock } from "../engine/engine.js";
import type { Runner } from "../engine/runner.js";
import { SimRunner } from "../engine/sim-runner.js";
import { SpindleError } from "../errors.js";
import { Rng } from "../sampling/rng.js";

/**
 * In-process engine benchmark: closed-loop clients against one EngineCore, no
 * HTTP, so batching modes and policies can be compared on the engine alone.
 * Each of `concurrency` clients keeps one request in flight and sends the next
 * as soon as the previous finishes, until `requests` have been sent.
 *
 * Time is the engine's clock: the real clock for a real runner; for a
 * `SimRunner` (unless `engineOpts.clock` says otherwise) a virtual clock that
 * each step moves by its simulated cost, so the result is the simulated
 * throughput, deterministic, and independent of the machine.
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
  /** Time to first token of each request, in the order the requests were sent. */
  ttftMs: number[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function positiveInt(name: string, v: number): void {
  if (!(Number.isInteger(v) && v >= 1))
    throw new SpindleError(`${name} must be a positive integer, got ${v}`);
}

export async function benchEngine(
  runner: Runner,
  engineOpts: EngineOptions,
  o: EngineBenchOptions,
): Promise<EngineBenchResult> {
  positiveInt("concurrency", o.concurrency);
  positiveInt("requests", o.requests);
  positiveInt("prompt tokens", o.promptTokens);
  positiveInt("max tokens", o.maxTokens);
  if (!(Number.isInteger(o.vocabSize) && o.vocabSize > 3))
    throw new SpindleError(`vocabulary size must be an integer above 3, got ${o.vocabSize}`);
  const clock: Clock = engineOpts.clock ?? (runner instanceof SimRunner ? new VirtualClock() : realClock);
  const engine = new EngineCore(runner, { ...engineOpts, clock, prefixCaching: false });
  const rng = new Rng(o.seed ?? 1);
  const ttftMs = new Array<number>(o.requests).fill(Number.NaN);
  const index = new Map<string, number>();
  let sent = 0;
  const next = () => {
    const prompt = Array.from({ length: o.promptTokens }, () => 3 + (rng.nextU32() % (o.vocabSize - 3)));
    const id = `b${sent}`;
    index.set(id, sent++);
    engine.add({ id, prompt, maxTokens: o.maxTokens, stopAtEog: false, sampling: { temperature: 0 } });
  };
  const t0 = clock.now();
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
      const wait = Math.max(0, wake - clock.now());
      if (clock.advance) clock.advance(wait);
      else await sleep(wait);
      continue;
    }
    for (const e of engine.step()) {
      outputTokens += e.tokens.length;
      if (e.finish) {
        const t = e.finish.times;
        const first = (t.firstToken ?? t.finished!) - t.arrival;
        ttftMs[index.get(e.id)!] = first;
        done++;
        ttft += first;
        latency += t.finished! - t.arrival;
        if (sent < o.requests) next();
      }
    }
    if (engine.lastStep.batchSize > 0) {
      batchSum += engine.lastStep.batchSize;
      steps++;
    }
  }
  const seconds = (clock.now() - t0) / 1000;
  return {
    requests: done,
    outputTokens,
    seconds,
    outputTokPerSec: outputTokens / seconds,
    meanTtftMs: ttft / done,
    meanLatencyMs: latency / done,
    meanBatch: batchSum / Math.max(1, steps),
    steps,
    ttftMs,
  };
}
