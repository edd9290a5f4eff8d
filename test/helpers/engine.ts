import { expect } from "vitest";
import type { EngineCore } from "../../src/engine/engine.js";
import type { EngineEvent } from "../../src/protocol/events.js";
import type { RequestSpec } from "../../src/protocol/request.js";

export interface Arrival {
  /** Engine step at which the request arrives. */
  at: number;
  spec: RequestSpec;
}

export interface DriveResult {
  tokens: Map<string, number[]>;
  text: Map<string, string>;
  finish: Map<string, NonNullable<EngineEvent["finish"]>>;
  /** Embedding requests' vectors. */
  embedding: Map<string, Float32Array>;
  steps: number;
  maxBatch: number;
}

/**
 * Drives an engine synchronously: requests arrive at given steps, the virtual clock (if any) moves
 * `tickMs` per iteration, and the loop runs until every request has finished. Bounded, so a
 * scheduler bug that stalls fails the test instead of hanging it.
 */
export function drive(
  engine: EngineCore,
  arrivals: Arrival[],
  tickMs = 5,
  maxIterations = 200_000,
): DriveResult {
  const tokens = new Map<string, number[]>();
  const text = new Map<string, string>();
  const finish = new Map<string, NonNullable<EngineEvent["finish"]>>();
  const embedding = new Map<string, Float32Array>();
  const queue = [...arrivals].sort((a, b) => a.at - b.at);
  let i = 0;
  let maxBatch = 0;
  for (let it = 0; it < maxIterations; it++) {
    while (queue.length > 0 && queue[0]!.at <= it) {
      const { spec } = queue.shift()!;
      engine.add(spec);
      tokens.set(spec.id, []);
      text.set(spec.id, "");
    }
    for (const e of engine.step()) {
      tokens.get(e.id)!.push(...e.tokens);
      text.set(e.id, text.get(e.id)! + e.text);
      if (e.embedding) embedding.set(e.id, e.embedding);
      if (e.finish) {
        expect(finish.has(e.id), `${e.id} finished twice`).toBe(false);
        finish.set(e.id, e.finish);
      }
    }
    maxBatch = Math.max(maxBatch, engine.lastStep.batchSize);
    engine.clock.advance?.(tickMs);
    i = it;
    if (queue.length === 0 && !engine.hasWork()) break;
  }
  expect(finish.size, "every request finished").toBe(arrivals.length);
  return { tokens, text, finish, embedding, steps: i, maxBatch };
}

/** Nothing leaked: no request left, every block free or cached-and-evictable. */
export function expectNoLeaks(engine: EngineCore): void {
  expect(engine.numUnfinished).toBe(0);
  expect(engine.scheduler.waiting).toHaveLength(0);
  expect(engine.scheduler.running).toHaveLength(0);
  expect(engine.blocks.allFree()).toBe(true);
}

/**
 * Runs the same requests (each engine its own copy of every spec, arriving at step `at[i]`, default
 * 0) through an engine without speculation and one with it; both must end with nothing leaked.
 */
export function withAndWithoutSpeculation(
  plain: EngineCore,
  fast: EngineCore,
  specs: RequestSpec[],
  at?: number[],
) {
  const arrivals = (): Arrival[] => specs.map((s, i) => ({ at: at?.[i] ?? 0, spec: { ...s } }));
  const a = drive(plain, arrivals());
  const b = drive(fast, arrivals());
  expectNoLeaks(plain);
  expectNoLeaks(fast);
  return { plain: a, spec: b, stats: fast.speculator!.stats, steps: [a.steps, b.steps], engine: fast };
}

/** Steps the engine until a step verifies draft tokens (at most `maxSteps`); how many it verified. */
export function stepUntilDrafted(engine: EngineCore, maxSteps = 40): number {
  for (let i = 0; i < maxSteps; i++) {
    engine.step();
    if (engine.lastStep.draftTokens > 0) return engine.lastStep.draftTokens;
  }
  return 0;
}

/** A greedy request (the speculation tests' requests), with any other fields overridden. */
export const greedySpec = (
  id: string,
  prompt: number[],
  maxTokens: number,
  over: Partial<RequestSpec> = {},
): RequestSpec => ({ id, prompt, maxTokens, sampling: { temperature: 0 }, ...over });
