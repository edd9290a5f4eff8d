import type { GGMLType } from "../gguf/types.js";

/**
 * The kernel boundary. Every piece of heavy math in the forward pass goes
 * through this one small interface, so an implementation (the plain
 * TypeScript reference in reference.ts, WebAssembly SIMD in wasm-kernels.ts) can be
 * swapped and tested against another on the same inputs.
 *
 * Conventions: activations are row-major Float32Array, one row per token
 * ("nTokens × width"); weights keep their ggml type and bytes.
 */

/**
 * RoPE pairing: "normal" rotates adjacent pairs (x[2i], x[2i+1]) — llama.cpp's
 * LLAMA_ROPE_TYPE_NORM, used for llama (whose Q/K are permuted at conversion);
 * "neox" rotates (x[i], x[i + d/2]) — used by qwen2/qwen3.
 */
export type RopeStyle = "normal" | "neox";

export interface RopeParams {
  style: RopeStyle;
  /** Number of leading dimensions of each head that are rotated. */
  dim: number;
  freqBase: number;
  /** Linear position scaling: position is multiplied by this (1/factor). */
  freqScale: number;
  /** Optional per-frequency divisors (llama 3.1 `rope_freqs.weight`, Phi-3's LongRoPE factors), length dim/2. */
  freqFactors?: Float32Array;
  /**
   * Multiplies the rotated dimensions (cos and sin) by this, as ggml's rope does with its
   * attn_factor (Phi-3 LongRoPE's `rope.scaling.attn_factor`); default 1.
   */
  attnFactor?: number;
}

/** A 2-D weight in its file type: `rows` output features, each a row of `cols` inputs. */
export interface WeightMatrix {
  name: string;
  type: GGMLType;
  rows: number;
  cols: number;
  /** rows × rowBytes bytes, in the ggml block layout of `type`. */
  data: Uint8Array;
  rowBytes: number;
}

/** Reads bytes [from, from + dst.length) of a matrix's rows × rowBytes bytes into dst. */
export type MatrixSource = (dst: Uint8Array, from: number) => void;

/**
 * The element type of the KV cache (`--kv-cache-type`): f32, or f16 (half the memory; each value
 * rounded to the nearest f16, ties to even, as llama.cpp's f16 cache stores it).
 */
export type KVCacheType = "f32" | "f16";

export const KV_CACHE_TYPES: readonly KVCacheType[] = ["f16", "f32"];

/** Bytes of one cached K or V element. */
export function kvElementBytes(type: KVCacheType): number {
  return type === "f16" ? 2 : 4;
}

/**
 * Paged KV storage seen by the attention kernel: for each layer, K and V pools
 * of `numBlocks` blocks. Within a block, layout is [kvHead][slot][headDim], so
 * one head's keys for a block are contiguous.
 */
export type PagedKV = PagedKVF32 | PagedKVF16;

interface PagedKVShape {
  blockSize: number;
  nKVHeads: number;
  headDim: number;
}

export interface PagedKVF32 extends PagedKVShape {
  type?: "f32";
  k: Float32Array;
  v: Float32Array;
}

/** f16 pools: k and v hold f16 bit patterns (every value, infinities and NaNs included, read exactly). */
export interface PagedKVF16 extends PagedKVShape {
  type: "f16";
  k: Uint16Array;
  v: Uint16Array;
}

/** One sequence's slice of a batch, as attention needs it. */
export interface AttentionSeq {
  /** First row of this sequence's new tokens in the batch. */
  row: number;
  /** Number of new tokens. */
  count: number;
  /** Position of the first new token (= tokens already cached before this step). */
  pos: number;
  /** Physical block ids, in order, covering positions 0 .. pos + count - 1. */
  blockTable: ArrayLike<number>;
}

/** How attention turns scores into weights, beyond plain causal softmax(q·k / sqrt(headDim)). */
export interface AttentionOptions {
  /** Multiplies q·k; default 1 / sqrt(headDim). */
  scale?: number;
  /**
   * Sliding window (llama.cpp's standard SWA): the query at position p sees keys at positions
   * p - window + 1 .. p only. Undefined: the whole causal context.
   */
  window?: number;
  /** Soft-capping of the scaled scores before softmax: cap · tanh(score / cap) (Gemma 2). */
  softcap?: number;
}

/** One matmul of a list: out (nTokens × w.rows) = x (nTokens × w.cols) · Wᵀ. */
export interface MatmulItem {
  w: WeightMatrix;
  x: Float32Array;
  nTokens: number;
  out: Float32Array;
}

export interface Kernels {
  readonly name: string;
  /** out[t, r] = Σ_c W[r, c] · x[t, c] for t < nTokens. out is nTokens × w.rows. */
  matmul(w: WeightMatrix, x: Float32Array, nTokens: number, out: Float32Array): void;
  /** out[i, :] = W[ids[i], :] as floats (embedding lookup). */
  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Float32Array): void;
  /** out[t, :] = x[t, :] / rms(x[t, :]) · weight, over rows of width `dim`. out may be x. */
  rmsnorm(
    x: Float32Array,
    weight: Float32Array,
    nRows: number,
    dim: number,
    eps: number,
    out: Float32Array,
  ): void;
  /** Rotates, in place, each of nHeads heads of each token row by its position. */
  rope(
    x: Float32Array,
    nTokens: number,
    nHeads: number,
    headDim: number,
    positions: Int32Array,
    p: RopeParams,
  ): void;
  /** out[i] = silu(gate[i]) · up[i] for i < n. */
  swiglu(gate: Float32Array, up: Float32Array, n: number, out: Float32Array): void;
  /**
   * out[i] = gelu(gate[i]) · up[i] for i < n, with the tanh approximation of GELU
   * (0.5·g·(1 + tanh(sqrt(2/π)·(g + 0.044715·g³))), Gemma's GeGLU).
   */
  geglu(gate: Float32Array, up: Float32Array, n: number, out: Float32Array): void;
  /** x[i] = cap · tanh(x[i] / cap) for i < n (Gemma 2's final-logit soft-capping). */
  softcap(x: Float32Array, n: number, cap: number): void;
  /** x[i] *= s for i < n. */
  scale(x: Float32Array, n: number, s: number): void;
  /** a[i] += b[i] for i < n. */
  addInPlace(a: Float32Array, b: Float32Array, n: number): void;
  /** Adds a bias vector to every row: x[t, :] += bias. */
  addBias(x: Float32Array, bias: Float32Array, nRows: number): void;
  /** Writes K and V rows of the batch (nTokens × nKVHeads·headDim) into their cache slots. */
  storeKV(kv: PagedKV, k: Float32Array, v: Float32Array, seqs: readonly AttentionSeq[]): void;
  /**
   * Causal attention of each sequence's new queries over its cached keys/values
   * (positions 0..pos+i for the i-th new token, or the last `opts.window` of them). q and out are
   * nTokens × nHeads·headDim.
   */
  attention(
    kv: PagedKV,
    q: Float32Array,
    nHeads: number,
    seqs: readonly AttentionSeq[],
    out: Float32Array,
    opts?: AttentionOptions,
  ): void;
  /**
   * Optional: greedy decoding's argmax of x[0 .. n), the first index of the largest value (NaN never
   * wins), or −1 where the caller must decide: x outside the kernels' memory, every value −∞ or NaN,
   * or a +∞ maximum.
   */
  argmax?(x: Float32Array, n: number): number;
  /**
   * Optional, with cleanCopy and softmax (sampling's whole-vocabulary loops, src/sampling/sampler.ts's
   * SamplerOps): a working array of n floats in the kernels' memory, the same one every call
   * (contents unspecified; valid until the next call).
   */
  samplingScratch?(n: number): Float32Array;
  /** Optional: dst[i] = src[i] with NaN → −∞ and +∞ → the largest float; false (nothing done) when src or dst is outside the kernels' memory. */
  cleanCopy?(src: Float32Array, dst: Float32Array, n: number): boolean;
  /**
   * Optional: x[i] = e^((x[i] − max)·invT) in place over x[0 .. n) (x holds no NaN), so the largest
   * is 1 and −∞ is 0; returns the sum, 0 when every x[i] is −∞, NaN when x is outside the kernels' memory.
   */
  softmax?(x: Float32Array, n: number, invT: number): number;
  /**
   * Optional: runs `work` (plain JavaScript that touches no kernel memory, such as a grammar's
   * token masks) on the calling thread during the next kernel call that other threads share, while
   * they compute, instead of before it. Returns `finish`, to call after those kernel calls: it runs
   * `work` then if no kernel call did, so `work` always runs exactly once.
   */
  overlap?(work: () => void): () => void;
  /** Optional: resolves once the kernels' threads have started (kernels without threads have none). */
  ready?(): Promise<void>;
  /**
   * Optional: a zeroed array of n floats in the kernels' own memory, where they work on it in place
   * (the forward pass keeps its activations there and KVCacheStorage its pools); undefined when it
   * does not fit. The array stays valid until given back with freeFloat32.
   */
  allocFloat32?(n: number): Float32Array | undefined;
  /** Optional: the same for n 16-bit elements (an f16 KV cache's pools); offered with allocFloat32. */
  allocUint16?(n: number): Uint16Array | undefined;
  /** Gives back an array from allocFloat32 or allocUint16 (no longer to be used). */
  freeFloat32?(a: Float32Array | Uint16Array): void;
  /**
   * Optional: outs[i] = ws[i] · x for several matrices over the same activations (q, k, v; gate,
   * up), as one call — the same results as separate matmuls, bit for bit, with one hand-off to
   * the kernel threads and one quantization of x.
   */
  matmulShared?(
    ws: readonly WeightMatrix[],
    x: Float32Array,
    nTokens: number,
    outs: readonly Float32Array[],
  ): void;
  /**
   * Optional: several independent matmuls (a layer's chosen experts, each over its own tokens) as
   * one call — the same results as a matmul per item, bit for bit, with one hand-off to the kernel
   * threads for all of them. Items with the same x (the same view) quantize it once.
   */
  matmulList?(items: readonly MatmulItem[]): void;
  /**
   * Optional: takes a matrix that will only ever be multiplied into the kernels' own memory now and
   * drops the caller's copy of its bytes (`w.data` becomes empty), so a model's weights are held
   * once. With `source`, w.data is not read: the kernels read the bytes from the source straight
   * into their memory (a model's file, with no copy in between). Returns false (and keeps `w` as
   * it is, its bytes unread when a source was given) when these kernels cannot multiply its type.
   */
  adopt?(w: WeightMatrix, source?: MatrixSource): boolean;
  /**
   * Stops the kernels' threads, if they have any (calls after it run on the calling thread). The
   * owner of a kernel set calls it when dropping the set: loadModel does for the set it made when
   * the load fails.
   */
  close?(): Promise<void>;
}

/** "wasm kernels (relaxed build), 2 threads" / "reference kernels": for logs and start-up lines. */
export function describeKernels(k: Kernels): string {
  const { threads, build } = k as { threads?: number; build?: string };
  return `${k.name} kernels${build !== undefined ? ` (${build} build)` : ""}${threads !== undefined ? `, ${threads} thread${threads === 1 ? "" : "s"}` : ""}`;
}
