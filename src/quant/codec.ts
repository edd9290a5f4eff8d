import type { GGMLType } from "../gguf/types.js";

/**
 * The codec of one ggml weight type, working on whole blocks. Offsets are in
 * bytes for the quantized side and in elements for the float side. The
 * dispatcher in index.ts checks lengths and block alignment before calling, so
 * codecs run tight loops with no checks and no allocation.
 */
export interface RowCodec {
  readonly type: GGMLType;
  /** Elements per block (1 for plain float types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** Decodes `nBlocks` blocks starting at byte `srcOff` into `dst[dstOff...]`. */
  dequantize(src: Uint8Array, srcOff: number, dst: Float32Array, dstOff: number, nBlocks: number): void;
  /** Encodes `nBlocks * blockSize` floats from `src[srcOff...]` into blocks at byte `dstOff`. */
  quantize(src: Float32Array, srcOff: number, nBlocks: number, dst: Uint8Array, dstOff: number): void;
  /** Dot product of `nBlocks` blocks at byte `wOff` with `x[xOff...]`. */
  dot(w: Uint8Array, wOff: number, x: Float32Array, xOff: number, nBlocks: number): number;
}

/** Round half to even, as ggml's `nearest_int` does for the values quantizers feed it. */
export function rint(v: number): number {
  const r = Math.round(v); // halves go up here
  return r - v === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/** Round half away from zero, like C's roundf. */
export function roundAway(v: number): number {
  return v < 0 ? -Math.floor(0.5 - v) : Math.floor(v + 0.5);
}

/** `v` limited to [lo, hi]. */
export function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}
