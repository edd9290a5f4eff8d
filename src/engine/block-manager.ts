import { BlockPool } from "./block-pool.js";
import type { Sequence } from "./sequence.js";

/**
 * The block manager: who owns which KV block, with reference counts and
 * automatic prefix caching.
 *
 * - The pool has a fixed number of blocks (the KV memory behind them is
 *   allocated once, in KVCacheStorage). A sequence's block table lists its
 *   blocks in position order.
 * - A full block is identified by a key chained over its parent's key and its
 *   own tokens, so equal keys mean equal prefixes. Full blocks are registered
 *   in the cache as soon as their K/V is computed; a new request takes the
 *   longest run of cached blocks matching its prompt (refcount + 1), and only
 *   computes the rest.
 * - A block whose refcount drops to 0 is free. If it is cached it stays
 *   findable until it is needed for something else, least recently freed
 *   first (LRU eviction). Uncached free blocks are handed out before any cached one.
 * - Shared blocks are always full and never written: a sequence only writes
 *   positions at or after numComputed, which lie in blocks it alone holds.
 * - A model whose layers mix full and sliding-window attention (Gemma 2 and 3) has a second pool
 *   for its sliding-window layers (`WindowPool`), and each sequence a second table over it
 *   (Sequence.windowTable). A sliding-window layer never reads a key older than its window, so a
 *   sequence gives back, after every step, the window-pool blocks wholly before the window of the
 *   next position it computes (their entries become -1; registered ones stay findable in the cache
 *   until evicted). A long sequence then holds about window + one step's tokens there, whatever
 *   its length. Admission takes a cached prefix only as long as the window pool also holds the
 *   blocks that prefix's window covers, so both tables agree on numComputed.
 */

/** The sliding-window layers' own pool: the window (tokens) and its blocks. */
export interface WindowPool {
  window: number;
  numBlocks: number;
}

export interface PrefixCacheStats {
  /** Prompt tokens looked up in the prefix cache. */
  queries: number;
  /** Prompt tokens found in the cache (= prefill tokens saved). */
  hits: number;
  /** Requests that found at least one cached block. */
  hitRequests: number;
  evictions: number;
}

/** FNV-1a over 32-bit words, twice with different seeds: a 64-bit key as a string. */
function blockKey(parent: string, tokens: ArrayLike<number>, start: number, end: number): string {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < parent.length; i++) {
    const c = parent.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193);
    h2 = Math.imul(h2 ^ c, 0x5bd1e995) ^ (h2 >>> 15);
  }
  for (let i = start; i < end; i++) {
    const t = tokens[i]!;
    h1 = Math.imul(h1 ^ t, 0x01000193);
    h2 = Math.imul(h2 ^ t, 0x5bd1e995) ^ (h2 >>> 15);
  }
  return `${(h1 >>> 0).toString(36)}.${(h2 >>> 0).toString(36)}`;
}

export class BlockManager {
  private readonly full: BlockPool;
  /** The sliding-window layers' pool, when the model has one (WindowPool). */
  private readonly sliding: BlockPool | undefined;
  private readonly window: number;
  readonly stats: PrefixCacheStats;

  constructor(
    numBlocks: number,
    readonly blockSize: number,
    readonly prefixCaching: boolean,
    windowPool?: WindowPool,
  ) {
    this.full = new BlockPool(numBlocks);
    this.sliding = windowPool && new BlockPool(windowPool.numBlocks);
    this.window = windowPool?.window ?? Number.POSITIVE_INFINITY;
    const pools = [this.full, this.sliding];
    this.stats = {
      queries: 0,
      hits: 0,
      hitRequests: 0,
      get evictions() {
        return pools.reduce((n, p) => n + (p?.evictions ?? 0), 0);
      },
    };
  }

  /** Blocks of the (full-attention layers') pool: what bounds a sequence's context. */
  get numBlocks(): number {
    return this.full.numBlocks;
  }

  /** Blocks of that pool that can be handed out now (free, cached or not). */
  get numFree(): number {
    return this.full.numFree;
  }

  /** The sliding-window layers' pool, when there is one: its size and free blocks. */
  get windowPool(): { window: number; numBlocks: number; numFree: number } | undefined {
    const p = this.sliding;
    return p && { window: this.window, numBlocks: p.numBlocks, numFree: p.numFree };
  }

  /** Fraction of blocks held by sequences (cached-but-free blocks count as free), in the fuller pool. */
  get usage(): number {
    const used = (p: BlockPool | undefined) => (p ? 1 - p.numFree / p.numBlocks : 0);
    return Math.max(used(this.full), used(this.sliding));
  }

  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /**
   * Admission: gives a sequence with no blocks its longest cached prefix. At
   * least one prompt token is always left to compute (its logits are needed). A sequence that
   * may not reuse a prefix (`reusePrefix` false) is given none.
   * Returns the number of tokens reused.
   */
  admit(seq: Sequence): number {
    if (seq.blockTable.length > 0) throw new Error(`sequence ${seq.id} already holds blocks`);
    seq.numComputed = 0;
    seq.numHashedBlocks = 0;
    seq.prefixKey = "";
    seq.cachedTokens = 0;
    seq.windowTable = [];
    if (!this.prefixCaching || !seq.reusePrefix) return 0;
    const bs = this.blockSize;
    const maxBlocks = Math.floor((seq.tokens.length - 1) / bs);
    this.stats.queries += seq.tokens.length;
    const keys: string[] = [];
    const hit: number[] = [];
    for (let i = 0; i < maxBlocks; i++) {
      const parent = keys[i - 1] ?? "";
      const key = blockKey(parent, seq.tokens, i * bs, (i + 1) * bs);
      const b = this.full.lookup(key, parent, seq.tokens, i * bs);
      if (b === undefined) break;
      hit.push(b);
      keys.push(key);
    }
    let windowHit: number[] | undefined = [];
    if (this.sliding) {
      // The longest prefix whose window the sliding pool holds too.
      while (hit.length > 0 && (windowHit = this.windowHit(seq.tokens, keys, hit.length)) === undefined)
        hit.pop();
    }
    for (const b of hit) this.full.ref(b);
    for (const b of windowHit ?? []) if (b >= 0) this.sliding!.ref(b);
    seq.blockTable = hit;
    seq.windowTable = this.sliding ? (windowHit ?? []) : [];
    seq.numHashedBlocks = hit.length;
    seq.prefixKey = keys[hit.length - 1] ?? "";
    seq.numComputed = hit.length * bs;
    seq.cachedTokens = seq.numComputed;
    this.stats.hits += seq.numComputed;
    if (hit.length > 0) this.stats.hitRequests++;
    return seq.numComputed;
  }

  /**
   * The sliding pool's table for a prefix of `n` cached blocks (-1 before its window), or undefined
   * when it lacks a block that window covers.
   */
  private windowHit(tokens: readonly number[], keys: readonly string[], n: number): number[] | undefined {
    const first = this.firstInWindow(n * this.blockSize);
    const table = new Array<number>(first).fill(-1);
    for (let i = first; i < n; i++) {
      const b = this.sliding!.lookup(keys[i]!, keys[i - 1] ?? "", tokens, i * this.blockSize);
      if (b === undefined) return undefined;
      table.push(b);
    }
    return table;
  }

  /** The first block the window of the query at position `pos` reads (0 without a window pool). */
  private firstInWindow(pos: number): number {
    return Math.floor(Math.max(0, pos + 1 - this.window) / this.blockSize);
  }

  /** Extra blocks a sequence needs (in the pool that needs more) to hold `n` more tokens beyond numComputed. */
  blocksNeeded(seq: Sequence, n: number): number {
    return Math.max(...this.needs(seq, n));
  }

  /** Per pool, the blocks to take for `n` more tokens (the sliding pool's 0 when there is none). */
  private needs(seq: Sequence, n: number): [number, number] {
    const end = this.blocksFor(seq.numComputed + n);
    return [
      Math.max(0, end - seq.blockTable.length),
      this.sliding ? Math.max(0, end - seq.windowTable.length) : 0,
    ];
  }

  canAllocate(seq: Sequence, n: number): boolean {
    return this.fits(this.needs(seq, n));
  }

  private fits([full, sliding]: [number, number]): boolean {
    return full <= this.full.numFree && sliding <= (this.sliding?.numFree ?? 0);
  }

  /** Grows the block tables to cover numComputed + n tokens. All or nothing: false if blocks ran out. */
  allocate(seq: Sequence, n: number): boolean {
    const need = this.needs(seq, n);
    if (!this.fits(need)) return false;
    const [full, sliding] = need;
    for (let i = 0; i < full; i++) seq.blockTable.push(this.full.take());
    for (let i = 0; i < sliding; i++) seq.windowTable.push(this.sliding!.take());
    return true;
  }

  /**
   * After a step computed tokens up to seq.numComputed: registers the blocks that became full, and
   * gives back the sliding pool's blocks the window has left behind.
   */
  commit(seq: Sequence): void {
    if (this.prefixCaching) this.register(seq);
    const table = seq.windowTable;
    for (let i = this.firstInWindow(seq.numComputed) - 1; i >= 0 && table[i]! >= 0; i--) {
      this.sliding!.unref(table[i]!);
      table[i] = -1;
    }
  }

  private register(seq: Sequence): void {
    const bs = this.blockSize;
    const full = Math.floor(seq.numComputed / bs);
    let parent = seq.prefixKey;
    for (let i = seq.numHashedBlocks; i < full; i++) {
      const key = blockKey(parent, seq.tokens, i * bs, (i + 1) * bs);
      const tokens = seq.tokens.slice(i * bs, (i + 1) * bs);
      this.full.register(seq.blockTable[i]!, key, parent, tokens);
      const w = seq.windowTable[i];
      if (this.sliding && w !== undefined && w >= 0) this.sliding.register(w, key, parent, tokens);
      // A block not registered (its content is cached already) stays private, and the chain goes
      // on with the key, which depends on content only.
      parent = key;
    }
    if (full > seq.numHashedBlocks) {
      seq.numHashedBlocks = full;
      seq.prefixKey = parent;
    }
  }

  /**
   * Releases the blocks past the one holding the next position to compute (numComputed): after a
   * speculative step, the blocks taken for draft tokens that were rejected.
   */
  trim(seq: Sequence): void {
    const keep = this.blocksFor(seq.numComputed + 1);
    while (seq.blockTable.length > keep) this.full.unref(seq.blockTable.pop()!);
    while (seq.windowTable.length > keep) this.sliding!.unref(seq.windowTable.pop()!);
  }

  /** Releases every block of a sequence (finish, abort, preemption). */
  free(seq: Sequence): void {
    // Free in reverse so the tail of a prefix is evicted before its head.
    for (let i = seq.blockTable.length - 1; i >= 0; i--) this.full.unref(seq.blockTable[i]!);
    for (let i = seq.windowTable.length - 1; i >= 0 && seq.windowTable[i]! >= 0; i--)
      this.sliding!.unref(seq.windowTable[i]!);
    seq.blockTable = [];
    seq.windowTable = [];
    seq.numHashedBlocks = 0;
    seq.prefixKey = "";
  }

  /** True when no sequence holds any block: everything is free or cached-and-evictable. */
  allFree(): boolean {
    return this.full.allFree() && (this.sliding?.allFree() ?? true);
  }
}
