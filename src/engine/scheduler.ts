import type { BlockManager } from "./block-manager.js";
import type { Sequence } from "./sequence.js";

/**
 * The scheduler: one decision per engine step, within a token budget.
 *
 * 1. Running sequences first, most urgent first: each gets its pending tokens
 *    (1 when decoding; a chunk when a prefill is not done) as far as the budget
 *    goes. When the block pool cannot hold them, the least urgent running
 *    sequence is preempted (its blocks freed, to be recomputed later) until it
 *    can; a sequence may have to preempt itself.
 * 2. Then waiting sequences, most urgent first, as long as budget, the
 *    sequence limit and free blocks allow: each takes its longest cached
 *    prefix and a first prefill chunk (chunked prefill). Nothing is admitted
 *    in a step that had to preempt.
 *
 * Speculative decoding: a decoding sequence may carry a draft (Sequence.draft); its draft tokens
 * are computed with its next token, so they count against the budget. They get only what plain work
 * leaves: drafts are cut (to nothing, when the batch is full) so that every running sequence's
 * pending tokens fit, and dropped in a step where a waiting sequence could be admitted or where
 * blocks run short, before anything is preempted.
 *
 * Urgency: `fcfs` is arrival order. `priority` orders by priority value (lower
 * first) minus an aging credit that grows with time spent waiting, so a low
 * priority request is eventually served. Preemption takes the least urgent,
 * and among equals the latest arrival.
 *
 * Batching modes change only when waiting sequences may be admitted:
 * `continuous` at every step; `static` only when nothing is running (the batch
 * runs until all of it finishes); `window` like static, but only once the
 * oldest waiting request has waited `batchWindowMs` (or the batch is full).
 */

export type Policy = "fcfs" | "priority";
export type BatchingMode = "continuous" | "static" | "window";

export interface SchedulerOptions {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  policy: Policy;
  /** Priority units credited per second of waiting (priority policy). */
  agingPerSecond: number;
  batching: BatchingMode;
  batchWindowMs: number;
}

export const DEFAULT_SCHEDULER_OPTIONS: SchedulerOptions = {
  maxNumSeqs: 64,
  maxNumBatchedTokens: 512,
  policy: "fcfs",
  agingPerSecond: 1,
  batching: "continuous",
  batchWindowMs: 50,
};

export interface ScheduledItem {
  seq: Sequence;
  /** Tokens to compute this step, starting at seq.numComputed. */
  n: number;
}

export interface ScheduleResult {
  items: ScheduledItem[];
  preempted: Sequence[];
  /** Sequences that can never fit in the KV cache (longer than the whole pool). */
  overflowed: Sequence[];
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  totalPreemptions = 0;

  constructor(
    private readonly blocks: BlockManager,
    readonly opts: SchedulerOptions,
  ) {}

  get numUnfinished(): number {
    return this.waiting.length + this.running.length;
  }

  add(seq: Sequence): void {
    this.waiting.push(seq);
  }

  /** Takes a sequence out of the queues and frees its blocks (finish or abort). */
  remove(seq: Sequence): void {
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    this.blocks.free(seq);
  }

  /** Lower is more urgent. */
  urgency(seq: Sequence, now: number): number {
    if (this.opts.policy === "fcfs") return seq.times.arrival;
    return seq.priority - (this.opts.agingPerSecond * (now - seq.times.arrival)) / 1000;
  }

  private compare(a: Sequence, b: Sequence, now: number): number {
    return this.urgency(a, now) - this.urgency(b, now) || a.times.arrival - b.times.arrival;
  }

  /** When a waiting batch may be admitted (window mode): the earliest time, or undefined if it may now. */
  admissionTime(now: number): number | undefined {
    if (this.opts.batching !== "window" || this.running.length > 0 || this.waiting.length === 0)
      return undefined;
    if (this.waiting.length >= this.opts.maxNumSeqs) return undefined;
    let oldest = Number.POSITIVE_INFINITY;
    for (const s of this.waiting) oldest = Math.min(oldest, s.times.arrival);
    const at = oldest + this.opts.batchWindowMs;
    return at > now ? at : undefined;
  }

  private mayAdmit(now: number): boolean {
    switch (this.opts.batching) {
      case "continuous":
        return true;
      case "static":
        return this.running.length === 0;
      case "window":
        return this.running.length === 0 && this.admissionTime(now) === undefined;
    }
  }

  schedule(now: number): ScheduleResult {
    const items: ScheduledItem[] = [];
    const preempted: Sequence[] = [];
    const overflowed: Sequence[] = [];
    let budget = this.opts.maxNumBatchedTokens;
    const scheduled = new Map<Sequence, ScheduledItem>();

    this.running.sort((a, b) => this.compare(a, b, now));
    let spare = this.draftBudget(now);
    for (const seq of [...this.running]) {
      if (budget <= 0) break;
      if (seq.state !== "running") continue; // preempted earlier in this step
      seq.draft.length = seq.numPending === 1 ? Math.min(seq.draft.length, spare) : 0;
      if (!this.blocks.canAllocate(seq, 1 + seq.draft.length)) seq.draft.length = 0;
      spare -= seq.draft.length;
      const n = Math.min(seq.numPending + seq.draft.length, budget);
      if (n <= 0) continue;
      if (seq.draft.length > 0) seq.draft.length = n - 1;
      while (!this.blocks.canAllocate(seq, n)) {
        const victim = this.pickVictim(now);
        if (victim === seq && this.running.length === 1) {
          // Alone, every other block free, and still too big: it can never fit. The engine finishes it.
          overflowed.push(seq);
          break;
        }
        this.preempt(victim);
        preempted.push(victim);
        const item = scheduled.get(victim);
        if (item) {
          budget += item.n;
          items.splice(items.indexOf(item), 1);
          scheduled.delete(victim);
        }
        if (victim === seq) break;
      }
      if (seq.state !== "running" || overflowed.includes(seq)) continue;
      this.blocks.allocate(seq, n);
      const item = { seq, n };
      items.push(item);
      scheduled.set(seq, item);
      budget -= n;
    }

    if (preempted.length === 0 && this.mayAdmit(now)) this.admit(now, items, budget);
    return { items, preempted, overflowed };
  }

  /**
   * Tokens drafts may use this step: the budget left once every running sequence has its pending
   * tokens, and none while a waiting sequence could be admitted (it needs the budget more).
   */
  private draftBudget(now: number): number {
    const admitting =
      this.waiting.length > 0 && this.running.length < this.opts.maxNumSeqs && this.mayAdmit(now);
    if (admitting) return 0;
    let spare = this.opts.maxNumBatchedTokens;
    for (const seq of this.running) spare -= seq.numPending;
    return Math.max(0, spare);
  }

  private admit(now: number, items: ScheduledItem[], budget: number): void {
    // Static and window modes form a whole batch at once; its prefills then run chunk by chunk.
    const wholeBatch = this.opts.batching !== "continuous";
    this.waiting.sort((a, b) => this.compare(a, b, now));
    while (this.waiting.length > 0 && this.running.length < this.opts.maxNumSeqs) {
      if (budget <= 0 && !wholeBatch) break;
      const seq = this.waiting[0]!;
      this.blocks.admit(seq);
      const n = Math.min(seq.numPending, Math.max(budget, 0));
      if (!this.blocks.allocate(seq, n)) {
        this.blocks.free(seq);
        break;
      }
      this.waiting.shift();
      this.running.push(seq);
      seq.state = "running";
      seq.times.firstScheduled ??= now;
      if (n > 0) {
        items.push({ seq, n });
        budget -= n;
      }
    }
  }

  /** The least urgent running sequence; among equals, the latest arrival. */
  private pickVictim(now: number): Sequence {
    let victim = this.running[0]!;
    for (const s of this.running) {
      const d = this.urgency(s, now) - this.urgency(victim, now);
      if (d > 0 || (d === 0 && s.times.arrival >= victim.times.arrival)) victim = s;
    }
    return victim;
  }

  private preempt(seq: Sequence): void {
    this.running.splice(this.running.indexOf(seq), 1);
    seq.draft = [];
    this.blocks.free(seq);
    seq.numComputed = 0;
    seq.state = "waiting";
    seq.preemptions++;
    this.totalPreemptions++;
    this.waiting.unshift(seq);
  }
}
