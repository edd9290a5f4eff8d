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
 */

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
  private readonly refCount: Int32Array;
  /** Key of a registered block, its parent's key and its tokens (checked on every hit: no false sharing on collision). */
  private readonly keyOf: (string | undefined)[];
  private readonly parentOf: (string | undefined)[];
  private readonly tokensOf: (number[] | undefined)[];
  private readonly cache = new Map<string, number>();
  private readonly freeUncached: number[] = [];
  /** Free blocks that are still in the cache, oldest first. */
  private readonly evictable = new Map<number, true>();
  readonly stats: PrefixCacheStats = { queries: 0, hits: 0, hitRequests: 0, evictions: 0 };

  constructor(
    readonly numBlocks: number,
    readonly blockSize: number,
    readonly prefixCaching: boolean,
  ) {
    if (numBlocks < 1) throw new Error("the KV cache needs at least one block");
    this.refCount = new Int32Array(numBlocks);
    this.keyOf = new Array(numBlocks);
    this.parentOf = new Array(numBlocks);
    this.tokensOf = new Array(numBlocks);
    for (let b = numBlocks - 1; b >= 0; b--) this.freeUncached.push(b);
  }

  /** Blocks that can be handed out now (free, cached or not). */
  get numFree(): number {
    return this.freeUncached.length + this.evictable.size;
  }

  /** Fraction of blocks held by sequences (cached-but-free blocks count as free). */
  get usage(): number {
    return 1 - this.numFree / this.numBlocks;
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
    if (!this.prefixCaching || !seq.reusePrefix) return 0;
    const bs = this.blockSize;
    const maxBlocks = Math.floor((seq.tokens.length - 1) / bs);
    this.stats.queries += seq.tokens.length;
    let parent = "";
    const hit: number[] = [];
    for (let i = 0; i < maxBlocks; i++) {
      const key = blockKey(parent, seq.tokens, i * bs, (i + 1) * bs);
      const b = this.cache.get(key);
      if (b === undefined || !this.sameBlock(b, parent, seq.tokens, i * bs)) break;
      hit.push(b);
      parent = key;
    }
    for (const b of hit) this.ref(b);
    seq.blockTable = hit;
    seq.numHashedBlocks = hit.length;
    seq.prefixKey = parent;
    seq.numComputed = hit.length * bs;
    seq.cachedTokens = seq.numComputed;
    this.stats.hits += seq.numComputed;
    if (hit.length > 0) this.stats.hitRequests++;
    return seq.numComputed;
  }

  /** Extra blocks a sequence needs to hold `n` more tokens beyond numComputed. */
  blocksNeeded(seq: Sequence, n: number): number {
    return Math.max(0, this.blocksFor(seq.numComputed + n) - seq.blockTable.length);
  }

  canAllocate(seq: Sequence, n: number): boolean {
    return this.blocksNeeded(seq, n) <= this.numFree;
  }

  /** Grows the block table to cover numComputed + n tokens. All or nothing: false if blocks ran out. */
  allocate(seq: Sequence, n: number): boolean {
    const need = this.blocksNeeded(seq, n);
    if (need > this.numFree) return false;
    for (let i = 0; i < need; i++) seq.blockTable.push(this.take());
    return true;
  }

  /** After a step computed tokens up to seq.numComputed: registers the blocks that became full. */
  commit(seq: Sequence): void {
    if (!this.prefixCaching) return;
    const bs = this.blockSize;
    const full = Math.floor(seq.numComputed / bs);
    let parent = seq.prefixKey;
    for (let i = seq.numHashedBlocks; i < full; i++) {
      const b = seq.blockTable[i]!;
      const key = blockKey(parent, seq.tokens, i * bs, (i + 1) * bs);
      if (!this.cache.has(key) && this.keyOf[b] === undefined) {
        this.cache.set(key, b);
        this.keyOf[b] = key;
        this.parentOf[b] = parent;
        this.tokensOf[b] = seq.tokens.slice(i * bs, (i + 1) * bs);
      }
      // Another block may already hold this content: this one then stays private and uncached,
      // and the chain goes on with the key, which depends on content only.
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
    while (seq.blockTable.length > keep) this.unref(seq.blockTable.pop()!);
  }

  /** Releases every block of a sequence (finish, abort, preemption). */
  free(seq: Sequence): void {
    // Free in reverse so the tail of a prefix is evicted before its head.
    for (let i = seq.blockTable.length - 1; i >= 0; i--) this.unref(seq.blockTable[i]!);
    seq.blockTable = [];
    seq.numHashedBlocks = 0;
    seq.prefixKey = "";
  }

  /** True when no sequence holds any block: everything is free or cached-and-evictable. */
  allFree(): boolean {
    return this.numFree === this.numBlocks && this.refCount.every((r) => r === 0);
  }

  private sameBlock(b: number, parent: string, tokens: number[], start: number): boolean {
    const t = this.tokensOf[b];
    if (!t || this.parentOf[b] !== parent) return false;
    for (let i = 0; i < t.length; i++) if (t[i] !== tokens[start + i]) return false;
    return true;
  }

  private ref(b: number): void {
    if (this.refCount[b] === 0) this.evictable.delete(b);
    this.refCount[b]!++;
  }

  private unref(b: number): void {
    if (this.refCount[b]! <= 0) throw new Error(`block ${b} freed twice`);
    if (--this.refCount[b]! > 0) return;
    if (this.keyOf[b] !== undefined) this.evictable.set(b, true);
    else this.freeUncached.push(b);
  }

  private take(): number {
    let b = this.freeUncached.pop();
    if (b === undefined) {
      const oldest = this.evictable.keys().next();
      if (oldest.done) throw new Error("no free KV block");
      b = oldest.value;
      this.evictable.delete(b);
      this.cache.delete(this.keyOf[b]!);
      this.keyOf[b] = undefined;
      this.parentOf[b] = undefined;
      this.tokensOf[b] = undefined;
      this.stats.evictions++;
    }
    this.refCount[b] = 1;
    return b;
  }
}
