import { GGMLType } from "../gguf/types.js";
import type { RowCodec } from "./codec.js";
import { F16_TO_F32, f32ToBF16, f32ToF16 } from "./fp16.js";

/**
 * Plain float rows: F32, F16 and BF16, little-endian, one element per "block".
 *
 * When the bytes sit at an aligned address on a little-endian machine, rows are
 * read through a Float32Array / Uint16Array view over the whole underlying
 * buffer. Views are cached per buffer, so a matmul that walks the rows of one
 * tensor creates a view once, not once per row.
 */

// Hot loops use module-local aliases of imported helpers: dev and test loaders (tsx, vite)
// turn imported bindings into property reads on a module object, several times slower.
const F16 = F16_TO_F32;
const toF16 = f32ToF16;
const toBF16 = f32ToBF16;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const f32Views = new WeakMap<ArrayBufferLike, Float32Array>();
const u16Views = new WeakMap<ArrayBufferLike, Uint16Array>();

/** A Float32Array over all of `bytes`'s buffer if byte `off` of `bytes` is 4-aligned, else undefined. */
function f32ViewAt(bytes: Uint8Array, off: number, n: number): Float32Array | undefined {
  const abs = bytes.byteOffset + off;
  if (!LITTLE_ENDIAN || (abs & 3) !== 0) return undefined;
  const buf = bytes.buffer;
  let view = f32Views.get(buf);
  if (view === undefined || view.length < (abs >>> 2) + n) {
    view = new Float32Array(buf, 0, buf.byteLength >>> 2);
    f32Views.set(buf, view);
  }
  return view;
}

/** A Uint16Array over all of `bytes`'s buffer if byte `off` of `bytes` is 2-aligned, else undefined. */
function u16ViewAt(bytes: Uint8Array, off: number, n: number): Uint16Array | undefined {
  const abs = bytes.byteOffset + off;
  if (!LITTLE_ENDIAN || (abs & 1) !== 0) return undefined;
  const buf = bytes.buffer;
  let view = u16Views.get(buf);
  if (view === undefined || view.length < (abs >>> 1) + n) {
    view = new Uint16Array(buf, 0, buf.byteLength >>> 1);
    u16Views.set(buf, view);
  }
  return view;
}

// Scratch word for assembling an f32 from four bytes on the unaligned path.
const wordF32 = new Float32Array(1);
const wordU32 = new Uint32Array(wordF32.buffer);

function readF32(bytes: Uint8Array, o: number): number {
  wordU32[0] = bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 24);
  return wordF32[0]!;
}

function readBF16(bytes: Uint8Array, o: number): number {
  wordU32[0] = (bytes[o]! << 16) | (bytes[o + 1]! << 24);
  return wordF32[0]!;
}

export const F32_CODEC: RowCodec = {
  type: GGMLType.F32,
  blockSize: 1,
  typeSize: 4,
  dequantize(src, srcOff, dst, dstOff, n) {
    const view = f32ViewAt(src, srcOff, n);
    if (view !== undefined) {
      const i0 = (src.byteOffset + srcOff) >>> 2;
      dst.set(view.subarray(i0, i0 + n), dstOff);
      return;
    }
    for (let i = 0; i < n; i++) dst[dstOff + i] = readF32(src, srcOff + 4 * i);
  },
  quantize(src, srcOff, n, dst, dstOff) {
    for (let i = 0; i < n; i++) {
      wordF32[0] = src[srcOff + i]!;
      const u = wordU32[0]!;
      const o = dstOff + 4 * i;
      dst[o] = u & 0xff;
      dst[o + 1] = (u >>> 8) & 0xff;
      dst[o + 2] = (u >>> 16) & 0xff;
      dst[o + 3] = u >>> 24;
    }
  },
  dot(w, wOff, x, xOff, n) {
    let sum = 0;
    const view = f32ViewAt(w, wOff, n);
    if (view !== undefined) {
      const i0 = (w.byteOffset + wOff) >>> 2;
      for (let i = 0; i < n; i++) sum += view[i0 + i]! * x[xOff + i]!;
      return sum;
    }
    for (let i = 0; i < n; i++) sum += readF32(w, wOff + 4 * i) * x[xOff + i]!;
    return sum;
  },
};

export const F16_CODEC: RowCodec = {
  type: GGMLType.F16,
  blockSize: 1,
  typeSize: 2,
  dequantize(src, srcOff, dst, dstOff, n) {
    const view = u16ViewAt(src, srcOff, n);
    if (view !== undefined) {
      const i0 = (src.byteOffset + srcOff) >>> 1;
      for (let i = 0; i < n; i++) dst[dstOff + i] = F16[view[i0 + i]!]!;
      return;
    }
    for (let i = 0, o = srcOff; i < n; i++, o += 2) {
      dst[dstOff + i] = F16[src[o]! | (src[o + 1]! << 8)]!;
    }
  },
  quantize(src, srcOff, n, dst, dstOff) {
    for (let i = 0, o = dstOff; i < n; i++, o += 2) {
      const h = toF16(src[srcOff + i]!);
      dst[o] = h & 0xff;
      dst[o + 1] = h >>> 8;
    }
  },
  dot(w, wOff, x, xOff, n) {
    let sum = 0;
    const view = u16ViewAt(w, wOff, n);
    if (view !== undefined) {
      const i0 = (w.byteOffset + wOff) >>> 1;
      for (let i = 0; i < n; i++) sum += F16[view[i0 + i]!]! * x[xOff + i]!;
      return sum;
    }
    for (let i = 0, o = wOff; i < n; i++, o += 2) {
      sum += F16[w[o]! | (w[o + 1]! << 8)]! * x[xOff + i]!;
    }
    return sum;
  },
};

export const BF16_CODEC: RowCodec = {
  type: GGMLType.BF16,
  blockSize: 1,
  typeSize: 2,
  dequantize(src, srcOff, dst, dstOff, n) {
    for (let i = 0, o = srcOff; i < n; i++, o += 2) dst[dstOff + i] = readBF16(src, o);
  },
  quantize(src, srcOff, n, dst, dstOff) {
    for (let i = 0, o = dstOff; i < n; i++, o += 2) {
      const h = toBF16(src[srcOff + i]!);
      dst[o] = h & 0xff;
      dst[o + 1] = h >>> 8;
    }
  },
  dot(w, wOff, x, xOff, n) {
    let sum = 0;
    for (let i = 0, o = wOff; i < n; i++, o += 2) sum += readBF16(w, o) * x[xOff + i]!;
    return sum;
  },
};
