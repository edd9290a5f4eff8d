import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { SimRunner } from "../../src/engine/sim-runner.js";
import type { EngineEvent } from "../../src/protocol/events.js";
import type { RequestSpec } from "../../src/protocol/request.js";
import { Rng } from "../../src/sampling/rng.js";
import { expectNoLeaks } from "../helpers/engine.js";

/**
 * Priority with aging, on the real scheduler with the simulated runner: 1300 requests, a backlog of
 * 300 low-priority requests at t=0 and a steady stream of 1000 high-priority ones (one per 100 ms
 * for 100 s) that alone keeps the engine about 90% busy.
 */

interface Timed {
  t: number;
  spec: RequestSpec;
}

/** Runs arrivals in virtual time: steps advance the clock by their simulated duration. */
function simulate(engine: EngineCore, arrivals: Timed[]) {
  const clock = engine.clock as VirtualClock;
  const queue = [...arrivals].sort((a, b) => a.t - b.t);
  const finish = new Map<string, NonNullable<EngineEvent["finish"]>>();
  for (let guard = 0; guard < 1_000_000; guard++) {
    while (queue.length > 0 && queue[0]!.t <= clock.now()) engine.add(queue.shift()!.spec);
    if (!engine.hasWork()) {
      if (queue.length === 0) break;
      clock.advance(queue[0]!.t - clock.now());
      continue;
    }
    for (const e of engine.step()) if (e.finish) finish.set(e.id, e.finish);
  }
  return finish;
}

function workload(): Timed[] {
  const rng = new Rng(21);
  const prompt = (n: number) => Array.from({ length: n }, () => 1 + (rng.nextU32() % 30000));
  const low = Array.from({ length: 300 }, (_, i) => ({
    t: 0,
    spec: { id: `low${i}`, prompt: prompt(32 + (rng.nextU32() % 64)), maxTokens: 32, priority: 10 },
  }));
  // About 90% of what the engine can serve: alone, the high stream keeps it nearly full.
  const high = Array.from({ length: 1000 }, (_, i) => ({
    t: 50 + i * 120,
    spec: { id: `high${i}`, prompt: prompt(32 + (rng.nextU32() % 64)), maxTokens: 32, priority: 0 },
  }));
  return [...low, ...high];
}

function run(agingPerSecond: number) {
  const engine = new EngineCore(new SimRunner({ numBlocks: 2048 }), {
    policy: "priority",
    agingPerSecond,
    maxNumSeqs: 16,
    maxNumBatchedTokens: 512,
    clock: new VirtualClock(),
  });
  const arrivals = workload();
  const finish = simulate(engine, arrivals);
  expectNoLeaks(engine);
  const stats = (prefix: string) => {
    const f = [...finish.entries()].filter(([id]) => id.startsWith(prefix)).map(([, v]) => v);
    const wait = f.map((v) => v.times.firstScheduled! - v.times.arrival).sort((a, b) => a - b);
    const ttft = f.map((v) => v.times.firstToken! - v.times.arrival).sort((a, b) => a - b);
    const q = (a: number[], p: number) => a[Math.min(a.length - 1, Math.floor(p * a.length))]!;
    return {
      n: f.length,
      completed: f.filter((v) => v.reason === "length").length,
      waitP50: q(wait, 0.5),
      waitP99: q(wait, 0.99),
      ttftP50: q(ttft, 0.5),
      lastFinish: Math.max(...f.map((v) => v.times.finished!)),
    };
  };
  return { engine, finish, arrivals, high: stats("high"), low: stats("low") };
}

describe("priority scheduling with aging (simulated runner, 1300 requests)", () => {
  it("high priority jumps the backlog, and with aging every low-priority request still finishes", () => {
    const { finish, arrivals, high, low } = run(0.2);
    console.log("queue wait per class (virtual ms):", { high, low });
    expect(high.n + low.n).toBe(1300);
    expect(high.completed).toBe(1000);
    expect(low.completed).toBe(300);
    // High-priority requests are served ahead of the low-priority requests that arrived before them.
    let jumped = 0;
    for (const { spec, t } of arrivals.filter((a) => a.spec.id.startsWith("high")).slice(0, 100)) {
      const h = finish.get(spec.id)!;
      const earlierLowStillWaiting = [...finish.entries()].some(
        ([id, f]) =>
          id.startsWith("low") && f.times.arrival <= t && f.times.firstToken! > h.times.firstToken!,
      );
      if (earlierLowStillWaiting) jumped++;
    }
    expect(jumped).toBe(100);
    expect(high.waitP50).toBeLessThan(low.waitP50 / 10);
    // Aging: low-priority requests do not wait for the high-priority stream to end (last arrival ≈ 100 s).
    const lastHighArrival = arrivals[arrivals.length - 1]!.t;
    expect(low.lastFinish).toBeLessThan(lastHighArrival);
  });

  it("aging bounds the backlog's wait: without it the tail waits for the high stream to leave room", () => {
    const aged = run(0.2);
    const plain = run(0);
    console.log(
      "low-priority wait p99 (virtual ms): aging 0.2/s",
      aged.low.waitP99,
      "no aging",
      plain.low.waitP99,
    );
    expect(plain.low.completed).toBe(300);
    // Without aging, low-priority requests run only in the gaps the high stream leaves.
    expect(plain.high.waitP99).toBeLessThan(aged.high.waitP99);
    expect(aged.low.waitP99).toBeLessThan(plain.low.waitP99 * 0.75);
    expect(aged.low.lastFinish).toBeLessThan(plain.low.lastFinish);
  });
});
