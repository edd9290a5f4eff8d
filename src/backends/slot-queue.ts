import { SpindleError } from "../errors.js";

/**
 * Where a request waits when its backend has a fixed number of slots (llama.cpp
 * sequences, requests in flight per upstream): the gateway's counterpart of the
 * engine scheduler's waiting queue, with the same policies.
 *
 *   fcfs      arrival order
 *   priority  lower `priority` first, minus an aging credit of agingPerSecond
 *             units per second waited, so low priority is served eventually;
 *             ties by arrival
 *
 * The owner says what a slot is: `take()` returns one (an upstream with room, a
 * free sequence) or undefined when none is free. Whenever one may have freed
 * up, the owner calls pump(), which hands slots to waiters, most urgent first.
 */

export interface SlotQueueOptions {
  /** Default fcfs, as the engine's scheduler. */
  policy?: "fcfs" | "priority";
  /** Priority units per second waited (default 1, as the engine's scheduler). */
  agingPerSecond?: number;
  /** Clock in ms (default performance.now). */
  now?: () => number;
}

interface Waiter<T> {
  priority: number;
  arrival: number;
  seq: number;
  resolve: (slot: T) => void;
  reject: (err: Error) => void;
  cleanup: () => void;
}

export class SlotQueue<T> {
  private readonly waiters: Waiter<T>[] = [];
  private readonly listeners = new Set<() => void>();
  private closedWith: Error | undefined;
  private nextSeq = 0;
  private readonly now: () => number;
  private readonly policy: "fcfs" | "priority";
  private readonly agingPerSecond: number;

  constructor(
    private readonly take: () => T | undefined,
    opts: SlotQueueOptions = {},
  ) {
    this.now = opts.now ?? (() => performance.now());
    this.policy = opts.policy ?? "fcfs";
    this.agingPerSecond = opts.agingPerSecond ?? 1;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Calls `cb` whenever the number of waiters changes. */
  onChange(cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  private changed(): void {
    for (const cb of this.listeners) cb();
  }

  /** Lower is more urgent. */
  private urgency(w: Waiter<T>, now: number): number {
    if (this.policy === "fcfs") return w.arrival;
    return w.priority - (this.agingPerSecond * (now - w.arrival)) / 1000;
  }

  /**
   * Waits for a slot. Rejects with a SpindleError (code "aborted") when `signal` aborts
   * first, or with the close() error when the queue closes.
   */
  acquire(priority: number, signal?: AbortSignal): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (signal?.aborted) return Promise.reject(abortedError(signal));
    if (this.waiters.length === 0) {
      const slot = this.take();
      if (slot !== undefined) return Promise.resolve(slot);
    }
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i < 0) return;
        this.waiters.splice(i, 1);
        this.changed();
        reject(abortedError(signal!));
      };
      const w: Waiter<T> = {
        priority,
        arrival: this.now(),
        seq: this.nextSeq++,
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener("abort", onAbort),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(w);
      this.changed();
      // A slot may be free while others wait only when pump() has not run since; try now.
      this.pump();
    });
  }

  /** Hands free slots to waiters, most urgent first. */
  pump(): void {
    if (this.waiters.length === 0) return;
    let moved = false;
    while (this.waiters.length > 0) {
      const now = this.now();
      let best = 0;
      for (let i = 1; i < this.waiters.length; i++) {
        const a = this.waiters[i]!;
        const b = this.waiters[best]!;
        const d = this.urgency(a, now) - this.urgency(b, now);
        if (d < 0 || (d === 0 && a.seq < b.seq)) best = i;
      }
      const slot = this.take();
      if (slot === undefined) break;
      const [w] = this.waiters.splice(best, 1);
      w!.cleanup();
      w!.resolve(slot);
      moved = true;
    }
    if (moved) this.changed();
  }

  /** Rejects every waiter and every later acquire() with `err`. */
  close(err: Error): void {
    this.closedWith ??= err;
    const all = this.waiters.splice(0);
    for (const w of all) {
      w.cleanup();
      w.reject(err);
    }
    if (all.length > 0) this.changed();
  }
}

function abortedError(signal: AbortSignal): SpindleError {
  const r: unknown = signal.reason;
  const why =
    typeof r === "string" && r.length > 0
      ? r
      : r instanceof Error && r.name !== "AbortError"
        ? r.message
        : "aborted while waiting for a slot";
  return new SpindleError(why, "aborted");
}
