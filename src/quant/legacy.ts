import { GGMLType } from "../gguf/types.js";
import { type RowCodec, roundAway } from "./codec.js";
import { F16_TO_F32, writeF16 } from "./fp16.js";

/**
 * The original 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
 *
 * Byte layouts (little-endian, no padding):
 *   Q4_0  18 B: f16 d | 16 B nibbles                    x = d * (q - 8)
 *   Q4_1  20 B: f16 d | f16 m | 16 B nibbles            x = d * q + m
 *   Q5_0  22 B: f16 d | u32 high bits | 16 B nibbles     x = d * (q - 16)
 *   Q5_1  24 B: f16 d | f16 m | u32 high bits | 16 B     x = d * q + m
 *   Q8_0  34 B: f16 d | 32 x i8                          x = d * q
 * In the nibble formats byte j holds element j in its low nibble and element
 * j + 16 in its high nibble; bit j of the u32 is the fifth bit of element j.
 *
 * The quantizers follow ggml's reference ones step for step in f32 arithmetic
 * (Math.fround at each operation C does in float), so a row quantized here has
 * the bytes llama.cpp's reference quantizer would write for it.
 */

// Hot loops use module-local aliases of imported helpers: dev and test loaders (tsx, vite)
// turn imported bindings into property reads on a module object, several times slower.
const F16 = F16_TO_F32;
const putF16 = writeF16;
const roundHalfAway = roundAway;

const fr = Math.fround;

/** The element of largest magnitude, with its sign (the first one on ties), as an f32. */
function signedAbsMax(src: Float32Array, o: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < 32; j++) {
    const v = src[o + j]!;
    const a = Math.abs(v);
    if (amax < a) {
      amax = a;
      max = v;
    }
  }
  return max;
}

// ---------------------------------------------------------------- Q4_0

const Q4_0: RowCodec = {
  type: GGMLType.Q4_0,
  blockSize: 32,
  typeSize: 18,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 18, o += 32) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      for (let j = 0; j < 16; j++) {
        const q = src[so + 2 + j]!;
        dst[o + j] = ((q & 15) - 8) * d;
        dst[o + j + 16] = ((q >>> 4) - 8) * d;
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 18, xo += 32) {
      let s = 0;
      for (let j = 0; j < 16; j++) {
        const q = w[wo + 2 + j]!;
        s += ((q & 15) - 8) * x[xo + j]! + ((q >>> 4) - 8) * x[xo + j + 16]!;
      }
      sum += s * F16[w[wo]! | (w[wo + 1]! << 8)]!;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 32, o += 18) {
      // The largest magnitude maps to -8, the end of the range with one more step.
      const d = fr(signedAbsMax(src, si) / -8);
      const id = d !== 0 ? fr(1 / d) : 0;
      putF16(dst, o, d);
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(15, Math.trunc(fr(fr(src[si + j]! * id) + 8.5)));
        const q1 = Math.min(15, Math.trunc(fr(fr(src[si + j + 16]! * id) + 8.5)));
        dst[o + 2 + j] = q0 | (q1 << 4);
      }
    }
  },
};

// ---------------------------------------------------------------- Q4_1

const Q4_1: RowCodec = {
  type: GGMLType.Q4_1,
  blockSize: 32,
  typeSize: 20,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 20, o += 32) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      const m = F16[src[so + 2]! | (src[so + 3]! << 8)]!;
      for (let j = 0; j < 16; j++) {
        const q = src[so + 4 + j]!;
        dst[o + j] = (q & 15) * d + m;
        dst[o + j + 16] = (q >>> 4) * d + m;
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 20, xo += 32) {
      let sq = 0;
      let sx = 0;
      for (let j = 0; j < 16; j++) {
        const q = w[wo + 4 + j]!;
        const x0 = x[xo + j]!;
        const x1 = x[xo + j + 16]!;
        sq += (q & 15) * x0 + (q >>> 4) * x1;
        sx += x0 + x1;
      }
      const d = F16[w[wo]! | (w[wo + 1]! << 8)]!;
      const m = F16[w[wo + 2]! | (w[wo + 3]! << 8)]!;
      sum += d * sq + m * sx;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 32, o += 20) {
      let min = Infinity;
      let max = -Infinity;
      for (let j = 0; j < 32; j++) {
        const v = src[si + j]!;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const d = fr(fr(max - min) / 15);
      const id = d !== 0 ? fr(1 / d) : 0;
      putF16(dst, o, d);
      putF16(dst, o + 2, min);
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(15, Math.trunc(fr(fr(fr(src[si + j]! - min) * id) + 0.5)));
        const q1 = Math.min(15, Math.trunc(fr(fr(fr(src[si + j + 16]! - min) * id) + 0.5)));
        dst[o + 4 + j] = q0 | (q1 << 4);
      }
    }
  },
};

// ---------------------------------------------------------------- Q5_0

function readU32(bytes: Uint8Array, o: number): number {
  return (bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 24)) >>> 0;
}

function writeU32(bytes: Uint8Array, o: number, v: number): void {
  bytes[o] = v & 0xff;
  bytes[o + 1] = (v >>> 8) & 0xff;
  bytes[o + 2] = (v >>> 16) & 0xff;
  bytes[o + 3] = v >>> 24;
}

const Q5_0: RowCodec = {
  type: GGMLType.Q5_0,
  blockSize: 32,
  typeSize: 22,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 22, o += 32) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      const qh = readU32(src, so + 2);
      for (let j = 0; j < 16; j++) {
        const q = src[so + 6 + j]!;
        dst[o + j] = (((q & 15) | (((qh >>> j) & 1) << 4)) - 16) * d;
        dst[o + j + 16] = (((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16) * d;
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 22, xo += 32) {
      const qh = readU32(w, wo + 2);
      let s = 0;
      for (let j = 0; j < 16; j++) {
        const q = w[wo + 6 + j]!;
        s +=
          (((q & 15) | (((qh >>> j) & 1) << 4)) - 16) * x[xo + j]! +
          (((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16) * x[xo + j + 16]!;
      }
      sum += s * F16[w[wo]! | (w[wo + 1]! << 8)]!;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 32, o += 22) {
      const d = fr(signedAbsMax(src, si) / -16);
      const id = d !== 0 ? fr(1 / d) : 0;
      putF16(dst, o, d);
      let qh = 0;
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(31, Math.trunc(fr(fr(src[si + j]! * id) + 16.5)));
        const q1 = Math.min(31, Math.trunc(fr(fr(src[si + j + 16]! * id) + 16.5)));
        dst[o + 6 + j] = (q0 & 15) | ((q1 & 15) << 4);
        qh |= ((q0 >>> 4) << j) | ((q1 >>> 4) << (j + 16));
      }
      writeU32(dst, o + 2, qh >>> 0);
    }
  },
};

// ---------------------------------------------------------------- Q5_1

const Q5_1: RowCodec = {
  type: GGMLType.Q5_1,
  blockSize: 32,
  typeSize: 24,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 24, o += 32) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      const m = F16[src[so + 2]! | (src[so + 3]! << 8)]!;
      const qh = readU32(src, so + 4);
      for (let j = 0; j < 16; j++) {
        const q = src[so + 8 + j]!;
        dst[o + j] = ((q & 15) | (((qh >>> j) & 1) << 4)) * d + m;
        dst[o + j + 16] = ((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) * d + m;
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 24, xo += 32) {
      const qh = readU32(w, wo + 4);
      let sq = 0;
      let sx = 0;
      for (let j = 0; j < 16; j++) {
        const q = w[wo + 8 + j]!;
        const x0 = x[xo + j]!;
        const x1 = x[xo + j + 16]!;
        sq += ((q & 15) | (((qh >>> j) & 1) << 4)) * x0 + ((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) * x1;
        sx += x0 + x1;
      }
      const d = F16[w[wo]! | (w[wo + 1]! << 8)]!;
      const m = F16[w[wo + 2]! | (w[wo + 3]! << 8)]!;
      sum += d * sq + m * sx;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 32, o += 24) {
      let min = Infinity;
      let max = -Infinity;
      for (let j = 0; j < 32; j++) {
        const v = src[si + j]!;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const d = fr(fr(max - min) / 31);
      const id = d !== 0 ? fr(1 / d) : 0;
      putF16(dst, o, d);
      putF16(dst, o + 2, min);
      let qh = 0;
      for (let j = 0; j < 16; j++) {
        const q0 = Math.min(31, Math.trunc(fr(fr(fr(src[si + j]! - min) * id) + 0.5)));
        const q1 = Math.min(31, Math.trunc(fr(fr(fr(src[si + j + 16]! - min) * id) + 0.5)));
        dst[o + 8 + j] = (q0 & 15) | ((q1 & 15) << 4);
        qh |= ((q0 >>> 4) << j) | ((q1 >>> 4) << (j + 16));
      }
      writeU32(dst, o + 4, qh >>> 0);
    }
  },
};

// ---------------------------------------------------------------- Q8_0

const Q8_0: RowCodec = {
  type: GGMLType.Q8_0,
  blockSize: 32,
  typeSize: 34,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 34, o += 32) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      for (let j = 0; j < 32; j++) dst[o + j] = ((src[so + 2 + j]! << 24) >> 24) * d;
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 34, xo += 32) {
      let s = 0;
      for (let j = 0; j < 32; j++) s += ((w[wo + 2 + j]! << 24) >> 24) * x[xo + j]!;
      sum += s * F16[w[wo]! | (w[wo + 1]! << 8)]!;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 32, o += 34) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(src[si + j]!));
      const d = fr(amax / 127);
      const id = d !== 0 ? fr(1 / d) : 0;
      putF16(dst, o, d);
      for (let j = 0; j < 32; j++) dst[o + 2 + j] = roundHalfAway(fr(src[si + j]! * id)) & 0xff;
    }
  },
};

export const LEGACY_CODECS: readonly RowCodec[] = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0];
