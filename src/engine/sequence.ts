import type { RequestSpec, SeqTimes } from "../protocol/request.js";

/**
 * A request inside the engine, and its life as an explicit state machine:
 *
 *   waiting ──schedule──▶ running ──(prefill chunks, then one token per step)──▶ finished
 *      ▲                     │
 *      └──── preempted ◀─────┘   (blocks ran out: KV freed, recomputed later)
 *
 * finished carries a reason: stop (EOS or a stop string), length (max tokens or
 * context), abort (cancelled or timed out), error. Every transition is
 * timestamped, so metrics and logs are derived from the sequence, not kept apart.
 *
 * An embedding request (spec.kind "embed") is a sequence that only prefills: it finishes, and
 * frees its blocks, in the step that computes its last prompt token.
 */

export type SeqState = "waiting" | "running" | "finished";

export class Sequence {
  state: SeqState = "waiting";
  /** prompt followed by every generated token: what the KV cache must hold. */
  readonly tokens: number[];
  readonly promptLength: number;
  /** How many of `tokens` have their K/V in the cache. */
  numComputed = 0;
  /** Prompt tokens served from the prefix cache at (last) admission. */
  cachedTokens = 0;
  /** Block ids covering positions 0 .. numComputed (+ tokens being computed). */
  blockTable: number[] = [];
  /**
   * The sliding-window layers' block ids, when their pool is separate (BlockManager's WindowPool):
   * -1 for the blocks the window has left behind, which the sequence gave back.
   */
  windowTable: number[] = [];
  /** How many leading blocks of blockTable have had their prefix key computed (and registered if new). */
  numHashedBlocks = 0;
  /** Prefix-cache key of the last of those blocks ("" before the first). */
  prefixKey = "";
  preemptions = 0;
  /**
   * Speculative decoding: tokens proposed to follow `tokens` (not part of them), verified in the
   * step that computes the last token. Set by the engine before scheduling; the scheduler may cut it.
   */
  draft: number[] = [];
  /**
   * Whether admission may take cached prefix blocks. False for an embedding that pools positions a
   * cached block would skip (mean, cls): it computes its whole prompt, and still registers its blocks.
   */
  reusePrefix = true;
  readonly times: SeqTimes;
  readonly priority: number;

  constructor(
    readonly spec: RequestSpec,
    now: number,
  ) {
    this.tokens = [...spec.prompt];
    this.promptLength = spec.prompt.length;
    this.priority = spec.priority ?? 0;
    this.times = { arrival: now };
  }

  get isEmbedding(): boolean {
    return this.spec.kind === "embed";
  }
  get id(): string {
    return this.spec.id;
  }
  get numOutput(): number {
    return this.tokens.length - this.promptLength;
  }
  get outputTokens(): number[] {
    return this.tokens.slice(this.promptLength);
  }
  /** Tokens whose K/V still has to be computed before the next token can be sampled. */
  get numPending(): number {
    return this.tokens.length - this.numComputed;
  }
  get isFinished(): boolean {
    return this.state === "finished";
  }
}
