import { type Kernels, type KVCacheType, kvElementBytes, type PagedKV } from "../kernels/kernels.js";
import type { ModelConfig } from "./config.js";

/** Default tokens per KV block (vLLM's default too). */
export const DEFAULT_BLOCK_SIZE = 16;

/**
 * The default KV cache type: f32. f16 (llama.cpp's default) holds twice the tokens in the same
 * memory but decodes 5% (1 stream) to 18% (16 streams) slower here (docs/benchmarks.md, "f16 or
 * f32 KV cache"): each key and value is widened in the attention loop.
 */
export const DEFAULT_KV_CACHE_TYPE: KVCacheType = "f32";

type KVShape = Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim"> &
  Partial<Pick<ModelConfig, "layerWindows">>;

/**
 * The sliding window of a model whose layers mix sliding-window and full attention (Gemma 2 and 3;
 * the largest, should they differ), undefined for any other model. Such a model's sliding-window
 * layers have pools of their own (KVCacheStorage's `windowBlocks`), in which a sequence holds only
 * the blocks its window still covers (the engine's BlockManager gives the others back).
 */
export function slidingWindowOf(config: KVShape): number | undefined {
  const windows = (config.layerWindows ?? []).filter((w) => w !== undefined);
  if (windows.length === 0 || windows.length === config.nLayers) return undefined;
  return Math.max(...windows);
}

/** Whether layer l keeps its K/V in a sliding-window pool (see slidingWindowOf). */
export function inWindowPool(config: KVShape, l: number): boolean {
  return slidingWindowOf(config) !== undefined && config.layerWindows?.[l] !== undefined;
}

/** How many layers keep their K/V in sliding-window pools. */
export function windowLayerCount(config: KVShape): number {
  let n = 0;
  for (let l = 0; l < config.nLayers; l++) if (inWindowPool(config, l)) n++;
  return n;
}

/** Pools allocated in a kernel set's memory, and the set to give them back to. */
interface Owned {
  kernels: Kernels;
  arrays: (Float32Array | Uint16Array)[];
}

/** Gives a collected storage's pools back to its kernels (when dispose() was not called). */
const reclaim = new FinalizationRegistry<Owned>((o) => {
  for (const a of o.arrays) o.kernels.freeFloat32?.(a);
});

/**
 * The KV cache's memory: for every layer, one K pool and one V pool of
 * `numBlocks` fixed-size blocks (`windowBlocks` for a sliding-window layer of a model that mixes
 * both kinds: see slidingWindowOf), allocated once, of f32 or f16 elements (`type`; an f16 cache also
 * has one flag per block, see PagedKVF16). Which blocks a sequence owns
 * is its block table (a list of block ids, position p lives in block
 * table[p / blockSize], slot p % blockSize); handing blocks out, sharing and
 * freeing them is the engine's block manager's job, not this class's.
 *
 * Where the pools live: in the memory of the kernels that compute with them when those kernels
 * offer `allocFloat32` (and `allocUint16` for f16; the WebAssembly kernels then run storeKV and
 * attention on the pools in place), else in ordinary typed arrays. The pools are allocated on first use: by the first
 * forward pass (Transformer.forward calls `useKernels`), by the `kernels` given here, or as plain
 * arrays when `layers` is read first. Pools already allocated elsewhere are moved (copied) on
 * `useKernels`. Memory taken from a kernel set is given back by `dispose()`, or when this object is
 * garbage-collected; do not keep a `layers` entry past the storage's lifetime.
 */
export class KVCacheStorage {
  private pools: PagedKV[] | undefined;
  private owned: Owned | undefined;
  /** Kernels whose memory could not hold the pools (not asked again). */
  private refused: Kernels | undefined;

  constructor(
    readonly config: KVShape,
    readonly numBlocks: number,
    readonly blockSize = DEFAULT_BLOCK_SIZE,
    kernels?: Kernels,
    readonly type: KVCacheType = DEFAULT_KV_CACHE_TYPE,
    readonly windowBlocks = numBlocks,
  ) {
    if (kernels) this.useKernels(kernels);
  }

  /** Per layer, the K and V pools (allocated now as plain arrays if not yet allocated). */
  get layers(): readonly PagedKV[] {
    this.pools ??= this.allocate(undefined);
    return this.pools;
  }

  /**
   * Puts the pools in these kernels' memory if they offer allocFloat32 and the pools fit (moving
   * them, contents included, if they were allocated elsewhere). Cheap when already done.
   */
  useKernels(kernels: Kernels): void {
    if (this.owned?.kernels === kernels || this.refused === kernels || !kernels.allocFloat32) return;
    if (this.type === "f16" && !kernels.allocUint16) return;
    const pools = this.allocate(kernels);
    if (pools === undefined) {
      this.refused = kernels;
      this.pools ??= this.allocate(undefined);
      return;
    }
    const old = this.pools;
    if (old !== undefined) {
      for (let l = 0; l < old.length; l++) {
        for (const [to, from] of arraysOf(pools[l]!).map((a, i) => [a, arraysOf(old[l]!)[i]!] as const))
          to.set(from);
      }
    }
    this.release();
    this.pools = pools;
    const owned = { kernels, arrays: pools.flatMap(arraysOf) };
    this.owned = owned;
    reclaim.register(this, owned, this);
  }

  /** Whether the pools live in a kernel set's memory (where its attention runs in place). */
  get inKernelMemory(): boolean {
    return this.owned !== undefined;
  }

  /** Gives kernel-owned pools back now; the storage is empty afterwards (fresh pools on next use). */
  dispose(): void {
    this.release();
    this.pools = undefined;
  }

  /** Bytes one token takes across all layers (K and V, of `type`). */
  static bytesPerToken(config: KVShape, type: KVCacheType = DEFAULT_KV_CACHE_TYPE): number {
    return config.nLayers * KVCacheStorage.layerBytesPerToken(config, type);
  }

  /** Bytes one token takes in one layer (K and V). */
  static layerBytesPerToken(config: KVShape, type: KVCacheType = DEFAULT_KV_CACHE_TYPE): number {
    return 2 * config.nKVHeads * config.headDim * kvElementBytes(type);
  }

  /** How many blocks fit in a memory budget. */
  static blocksForBudget(
    config: KVShape,
    bytes: number,
    blockSize = DEFAULT_BLOCK_SIZE,
    type: KVCacheType = DEFAULT_KV_CACHE_TYPE,
  ): number {
    return Math.floor(bytes / (KVCacheStorage.bytesPerToken(config, type) * blockSize));
  }

  /** The pools' bytes (K and V of every layer; an f16 cache's block flags not counted). */
  get bytes(): number {
    const windowed = windowLayerCount(this.config);
    const blockTokens =
      (this.numBlocks * (this.config.nLayers - windowed) + this.windowBlocks * windowed) * this.blockSize;
    return blockTokens * KVCacheStorage.layerBytesPerToken(this.config, this.type);
  }

  get capacityTokens(): number {
    return this.numBlocks * this.blockSize;
  }

  private release(): void {
    const o = this.owned;
    if (o === undefined) return;
    reclaim.unregister(this);
    this.owned = undefined;
    for (const a of o.arrays) o.kernels.freeFloat32?.(a);
  }

  /** Zeroed pools from the kernels' allocator (undefined if they do not fit) or plain arrays. */
  private allocate(kernels: undefined): PagedKV[];
  private allocate(kernels: Kernels | undefined): PagedKV[] | undefined;
  private allocate(kernels: Kernels | undefined): PagedKV[] | undefined {
    const c = this.config;
    const got: (Float32Array | Uint16Array)[] = [];
    const kept = <T extends Float32Array | Uint16Array>(a: T | undefined): T | undefined => {
      if (a !== undefined) got.push(a);
      return a;
    };
    const f32 = (n: number) =>
      kernels?.allocFloat32 === undefined ? new Float32Array(n) : kept(kernels.allocFloat32(n));
    const u16 = (n: number) =>
      kernels?.allocUint16 === undefined ? new Uint16Array(n) : kept(kernels.allocUint16(n));
    const shape = { blockSize: this.blockSize, nKVHeads: c.nKVHeads, headDim: c.headDim };
    const pools: PagedKV[] = [];
    for (let l = 0; l < c.nLayers; l++) {
      let pool: PagedKV | undefined;
      const blocks = inWindowPool(c, l) ? this.windowBlocks : this.numBlocks;
      const perLayer = blocks * this.blockSize * c.nKVHeads * c.headDim;
      if (this.type === "f16") {
        const k = u16(perLayer);
        const v = k && u16(perLayer);
        if (v !== undefined) pool = { ...shape, type: "f16", k: k!, v };
      } else {
        const k = f32(perLayer);
        const v = k && f32(perLayer);
        if (v !== undefined) pool = { ...shape, k: k!, v };
      }
      if (pool === undefined) {
        for (const a of got) kernels?.freeFloat32?.(a);
        return undefined;
      }
      pools.push(pool);
    }
    return pools;
  }
}

/** A layer's arrays: K and V. */
function arraysOf(p: PagedKV): (Float32Array | Uint16Array)[] {
  return [p.k, p.v];
}
