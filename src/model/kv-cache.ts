import type { Kernels, PagedKV } from "../kernels/kernels.js";
import type { ModelConfig } from "./config.js";

/** Default tokens per KV block (vLLM's default too). */
export const DEFAULT_BLOCK_SIZE = 16;

type KVShape = Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim">;

/** Pools allocated in a kernel set's memory, and the set to give them back to. */
interface Owned {
  kernels: Kernels;
  arrays: Float32Array[];
}

/** Gives a collected storage's pools back to its kernels (when dispose() was not called). */
const reclaim = new FinalizationRegistry<Owned>((o) => {
  for (const a of o.arrays) o.kernels.freeFloat32?.(a);
});

/**
 * The KV cache's memory: for every layer, one K pool and one V pool of
 * `numBlocks` fixed-size blocks, allocated once. Which blocks a sequence owns
 * is its block table (a list of block ids, position p lives in block
 * table[p / blockSize], slot p % blockSize); handing blocks out, sharing and
 * freeing them is the engine's block manager's job, not this class's.
 *
 * Where the pools live: in the memory of the kernels that compute with them when those kernels
 * offer `allocFloat32` (the WebAssembly kernels then run storeKV and attention on the pools in
 * place), else in ordinary Float32Arrays. The pools are allocated on first use: by the first
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
    const pools = this.allocate(kernels);
    if (pools === undefined) {
      this.refused = kernels;
      this.pools ??= this.allocate(undefined);
      return;
    }
    const old = this.pools;
    if (old !== undefined) {
      for (let l = 0; l < old.length; l++) {
        pools[l]!.k.set(old[l]!.k);
        pools[l]!.v.set(old[l]!.v);
      }
    }
    this.release();
    this.pools = pools;
    this.owned = { kernels, arrays: pools.flatMap((p) => [p.k, p.v]) };
    reclaim.register(this, this.owned, this);
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

  /** Bytes one token takes across all layers (K and V, float32). */
  static bytesPerToken(config: KVShape): number {
    return 2 * config.nLayers * config.nKVHeads * config.headDim * 4;
  }

  /** How many blocks fit in a memory budget. */
  static blocksForBudget(config: KVShape, bytes: number, blockSize = DEFAULT_BLOCK_SIZE): number {
    return Math.floor(bytes / (KVCacheStorage.bytesPerToken(config) * blockSize));
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
    const perLayer = this.numBlocks * this.blockSize * c.nKVHeads * c.headDim;
    const got: Float32Array[] = [];
    const make = (): Float32Array | undefined => {
      if (kernels?.allocFloat32 === undefined) return new Float32Array(perLayer);
      const a = kernels.allocFloat32(perLayer);
      if (a !== undefined) got.push(a);
      return a;
    };
    const pools: PagedKV[] = [];
    for (let l = 0; l < c.nLayers; l++) {
      const k = make();
      const v = k && make();
      if (k === undefined || v === undefined) {
        for (const a of got) kernels?.freeFloat32?.(a);
        return undefined;
      }
      pools.push({ blockSize: this.blockSize, nKVHeads: c.nKVHeads, headDim: c.headDim, k, v });
    }
    return pools;
  }
}
