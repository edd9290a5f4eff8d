import { setMaxListeners } from "node:events";
import type { Rng } from "../sampling/rng.js";
import { arrivalOffsetsMs } from "./arrivals.js";
import type { StreamResult } from "./client.js";
import type { BenchItem } from "./workload.js";

/**
 * Load drivers: how the requests of one run are sent.
 *
 * - closed loop: `concurrency` clients, each sending its next request as soon
 *   as its previous one ends;
 * - open loop: requests sent at arrival times drawn for a rate and burstiness
 *   (arrivals.ts), whatever is in flight, optionally capped at
 *   `maxConcurrency` in flight (a request due while the cap is reached waits).
 *
 * Items with `fixedAtMs` (the priority workload's backlog) are sent at that
 * offset outside the shape. Every run is bounded: by its item count and by
 * `maxSeconds`, when sending stops and what is in flight is cut off (failed,
 * "cut off at the end of the run"). `stop` (Ctrl-C) stops sending, waits up
 * to `graceMs` for what is in flight, then cuts it off ("interrupted");
 * `kill` (a second Ctrl-C) cuts it off at once.
 */

export type LoadShape =
  | { kind: "closed"; concurrency: number }
  | { kind: "open"; rate: number; burstiness: number; maxConcurrency?: number };

export function describeShape(s: LoadShape): string {
  if (s.kind === "closed") return `concurrency ${s.concurrency}`;
  const rate = Number.isFinite(s.rate) ? `${s.rate} req/s` : "all at once";
  const b = s.burstiness === 1 || !Number.isFinite(s.rate) ? "" : `, burstiness ${s.burstiness}`;
  const c = s.maxConcurrency ? `, max concurrency ${s.maxConcurrency}` : "";
  return `rate ${rate}${b}${c}`;
}

export interface SentRecord {
  item: BenchItem;
  /** Index of the item in the run's item list. */
  index: number;
  /** Send time, ms after the run's start. */
  sentAtMs: number;
  result: StreamResult;
}

export interface DriveProgress {
  total: number;
  sent: number;
  done: number;
  failed: number;
  inFlight: number;
}

export interface DriveOptions {
  items: readonly BenchItem[];
  shape: LoadShape;
  /** Sends one item; must resolve (never reject) and honour the signal. */
  send: (item: BenchItem, index: number, signal: AbortSignal) => Promise<StreamResult>;
  /** Arrival times of the open loop. */
  rng: Rng;
  maxSeconds: number;
  /** Aborting it stops sending (Ctrl-C). */
  stop?: AbortSignal;
  /** After `stop`, how long in-flight requests may still finish. */
  graceMs?: number;
  /** Aborting it cuts off what is in flight at once (a second Ctrl-C). */
  kill?: AbortSignal;
  onProgress?: (p: DriveProgress) => void;
  now?: () => number;
}

export interface DriveResult {
  records: SentRecord[];
  /** Clock value at the run's start. */
  startedAt: number;
  /** From the start to the end of the last request, ms. */
  durationMs: number;
  /** Items never sent (run cut short by time or Ctrl-C). */
  notSent: number;
  timedOut: boolean;
  interrupted: boolean;
}

export const CUT_OFF = "cut off at the end of the run (--max-seconds)";
export const INTERRUPTED = "interrupted (Ctrl-C)";

export async function drive(o: DriveOptions): Promise<DriveResult> {
  const now = o.now ?? (() => performance.now());
  const t0 = now();
  const records: SentRecord[] = [];
  const inflight = new AbortController();
  // Every request in flight listens to it.
  setMaxListeners(0, inflight.signal);
  const sending = new AbortController();
  const pending = new Set<Promise<void>>();
  let timedOut = false;
  let interrupted = false;
  let sent = 0;
  let done = 0;
  let failed = 0;
  const total = o.items.length;
  const progress = () => o.onProgress?.({ total, sent, done, failed, inFlight: sent - done });

  const timers: NodeJS.Timeout[] = [];
  timers.push(
    setTimeout(() => {
      timedOut = true;
      sending.abort();
      inflight.abort(CUT_OFF);
    }, o.maxSeconds * 1000),
  );
  const onStop = () => {
    if (sending.signal.aborted && inflight.signal.aborted) return;
    interrupted = true;
    sending.abort();
    timers.push(setTimeout(() => inflight.abort(INTERRUPTED), o.graceMs ?? 0));
  };
  if (o.stop?.aborted) onStop();
  else o.stop?.addEventListener("abort", onStop, { once: true });
  const onKill = () => {
    onStop();
    inflight.abort(INTERRUPTED);
  };
  if (o.kill?.aborted) onKill();
  else o.kill?.addEventListener("abort", onKill, { once: true });

  // Resolves after `ms` or as soon as sending stops.
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      if (sending.signal.aborted || ms <= 0) return resolve();
      const t = setTimeout(wake, ms);
      function wake() {
        clearTimeout(t);
        sending.signal.removeEventListener("abort", wake);
        resolve();
      }
      sending.signal.addEventListener("abort", wake, { once: true });
    });

  let slotWaiters: Array<() => void> = [];
  const releaseSlot = () => {
    const w = slotWaiters;
    slotWaiters = [];
    for (const f of w) f();
  };
  sending.signal.addEventListener("abort", releaseSlot, { once: true });

  const launch = (index: number, onEnd?: () => void): Promise<void> => {
    const item = o.items[index]!;
    const sentAtMs = now() - t0;
    sent++;
    progress();
    const p = o.send(item, index, inflight.signal).then((result) => {
      records.push({ item, index, sentAtMs, result });
      done++;
      if (!result.ok) failed++;
      progress();
      pending.delete(p);
      onEnd?.();
      releaseSlot();
    });
    pending.add(p);
    return p;
  };

  const fixed: number[] = [];
  const shaped: number[] = [];
  o.items.forEach((it, i) => {
    (it.fixedAtMs !== undefined ? fixed : shaped).push(i);
  });

  const fixedSender = (async () => {
    const order = [...fixed].sort((a, b) => o.items[a]!.fixedAtMs! - o.items[b]!.fixedAtMs!);
    for (const i of order) {
      await sleep(o.items[i]!.fixedAtMs! - (now() - t0));
      if (sending.signal.aborted) return;
      void launch(i);
    }
  })();

  const shapedSender = (async () => {
    if (o.shape.kind === "closed") {
      let next = 0;
      const client = async () => {
        while (next < shaped.length && !sending.signal.aborted) await launch(shaped[next++]!);
      };
      await Promise.all(Array.from({ length: Math.max(1, o.shape.concurrency) }, client));
      return;
    }
    const offsets = arrivalOffsetsMs(o.rng, shaped.length, o.shape.rate, o.shape.burstiness);
    const cap = o.shape.maxConcurrency;
    let shapedInFlight = 0;
    for (let k = 0; k < shaped.length; k++) {
      await sleep(offsets[k]! - (now() - t0));
      while (cap !== undefined && shapedInFlight >= cap && !sending.signal.aborted)
        await new Promise<void>((r) => slotWaiters.push(r));
      if (sending.signal.aborted) return;
      shapedInFlight++;
      void launch(shaped[k]!, () => shapedInFlight--);
    }
  })();

  await Promise.all([fixedSender, shapedSender]);
  while (pending.size > 0) await Promise.all([...pending]);
  const end = now();
  for (const t of timers) clearTimeout(t);
  o.stop?.removeEventListener("abort", onStop);
  o.kill?.removeEventListener("abort", onKill);
  records.sort((a, b) => a.sentAtMs - b.sentAtMs || a.index - b.index);
  return {
    records,
    startedAt: t0,
    durationMs: end - t0,
    notSent: total - sent,
    timedOut,
    interrupted,
  };
}
