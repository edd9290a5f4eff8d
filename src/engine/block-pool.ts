/**
 * One pool of KV blocks: reference counts, and the prefix cache's content-addressed index over it.
 *
 * - A block is free when its refcount is 0. Free blocks that hold a registered prefix stay findable
 *   (`lookup`) until they are needed for something else, least recently freed first (LRU
 *   eviction); uncached free blocks are handed out before any cached one.
 * - A registered block is known by a key chained over its parent's key and its own tokens (see
 *   BlockManager); its parent key and tokens are kept and checked on every hit, so a key collision
 *   never shares a block.
 *
 * The BlockManager holds one pool per kind of layer: the full-attention layers', and a Gemma
 * model's sliding-window layers' (a block id means a slot in that pool's memory only).
 */
export class BlockPool {
  private readonly refCount: Int32Array;
  private readonly keyOf: (string | undefined)[];
  private readonly parentOf: (string | undefined)[];
  private readonly tokensOf: (number[] | undefined)[];
  private readonly cache = new Map<string, number>();
  private readonly freeUncached: number[] = [];
  /** Free blocks that are still in the cache, oldest first. */
  private readonly evictable = new Map<number, true>();
  evictions = 0;

  constructor(readonly numBlocks: number) {
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

  /** True when no block is held: everything is free or cached-and-evictable. */
  allFree(): boolean {
    return this.numFree === this.numBlocks && this.refCount.every((r) => r === 0);
  }

  /** The cached block with this key whose parent and tokens (tokens[start..]) are these, if any. */
  lookup(key: string, parent: string, tokens: readonly number[], start: number): number | undefined {
    const b = this.cache.get(key);
    if (b === undefined) return undefined;
    const t = this.tokensOf[b];
    if (!t || this.parentOf[b] !== parent) return undefined;
    for (let i = 0; i < t.length; i++) if (t[i] !== tokens[start + i]) return undefined;
    return b;
  }

  /**
   * Registers a held, full block under its key. Another block may already hold this content: this
   * one then stays private and uncached.
   */
  register(b: number, key: string, parent: string, tokens: number[]): void {
    if (this.cache.has(key) || this.keyOf[b] !== undefined) return;
    this.cache.set(key, b);
    this.keyOf[b] = key;
    this.parentOf[b] = parent;
    this.tokensOf[b] = tokens;
  }

  ref(b: number): void {
    if (this.refCount[b] === 0) this.evictable.delete(b);
    this.refCount[b]!++;
  }

  unref(b: number): void {
    if (this.refCount[b]! <= 0) throw new Error(`block ${b} freed twice`);
    if (--this.refCount[b]! > 0) return;
    if (this.keyOf[b] !== undefined) this.evictable.set(b, true);
    else this.freeUncached.push(b);
  }

  /** A free block, held once: an uncached one if any, else the least recently freed cached one. */
  take(): number {
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
      this.evictions++;
    }
    this.refCount[b] = 1;
    return b;
  }
}
