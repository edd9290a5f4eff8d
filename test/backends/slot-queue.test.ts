import { describe, expect, it } from "vitest";
import { SlotQueue } from "../../src/backends/slot-queue.js";

/** A queue over `n` numbered slots on a clock the test moves. */
function pool(n: number, policy: "fcfs" | "priority", agingPerSecond = 1) {
  const free = Array.from({ length: n }, (_, i) => i);
  let t = 0;
  const q = new SlotQueue<number>(() => free.shift(), { policy, agingPerSecond, now: () => t });
  return {
    q,
    release(slot: number) {
      free.push(slot);
      q.pump();
    },
    advance(ms: number) {
      t += ms;
    },
  };
}

const flush = () => new Promise((r) => setImmediate(r));

describe("SlotQueue", () => {
  it("hands out free slots at once, then queues", async () => {
    const p = pool(2, "fcfs");
    expect(await p.q.acquire(0)).toBe(0);
    expect(await p.q.acquire(0)).toBe(1);
    let got: number | undefined;
    void p.q.acquire(0).then((s) => (got = s));
    await flush();
    expect(got).toBeUndefined();
    expect(p.q.waiting).toBe(1);
    p.release(1);
    await flush();
    expect(got).toBe(1);
    expect(p.q.waiting).toBe(0);
  });

  it("fcfs serves in arrival order whatever the priority", async () => {
    const p = pool(1, "fcfs");
    const held = await p.q.acquire(0);
    const order: string[] = [];
    for (const [name, prio] of [
      ["a", 5],
      ["b", -5],
      ["c", 0],
    ] as const) {
      void p.q.acquire(prio).then((s) => {
        order.push(name);
        p.release(s);
      });
    }
    p.release(held);
    await flush();
    expect(order).toEqual(["a", "b", "c"]);
  });

  it("priority serves the lowest value first, ties by arrival, and aging lets old requests through", async () => {
    const p = pool(1, "priority", 1);
    const held = await p.q.acquire(0);
    const order: string[] = [];
    const take = (name: string, prio: number) =>
      void p.q.acquire(prio).then((s) => {
        order.push(name);
        p.release(s);
      });
    take("low", 10);
    p.advance(1000);
    take("high", 0);
    take("high2", 0);
    p.release(held);
    await flush();
    expect(order).toEqual(["high", "high2", "low"]);

    // Waiting 20 s at 1 unit/s beats a fresh priority-9 request.
    const held2 = await p.q.acquire(0);
    order.length = 0;
    take("old", 10);
    p.advance(20_000);
    take("fresh", 9);
    p.release(held2);
    await flush();
    expect(order).toEqual(["old", "fresh"]);
  });

  it("an abort while waiting rejects that waiter only; close rejects the rest", async () => {
    const p = pool(1, "fcfs");
    await p.q.acquire(0);
    const ac = new AbortController();
    const a = p.q.acquire(0, ac.signal);
    const b = p.q.acquire(0);
    ac.abort("client gone");
    await expect(a).rejects.toThrow("client gone");
    expect(p.q.waiting).toBe(1);
    p.q.close(new Error("closing"));
    await expect(b).rejects.toThrow("closing");
    await expect(p.q.acquire(0)).rejects.toThrow("closing");
  });
});
