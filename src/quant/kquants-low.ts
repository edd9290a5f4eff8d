import { GGMLType } from "../gguf/types.js";
import type { RowCodec } from "./codec.js";
import { F16_TO_F32 } from "./fp16.js";
import {
  levels,
  mCode,
  putU16,
  quantizeAffineSuperBlock,
  quantizeSymmetricSuperBlock,
  scCode,
  signedCode,
  signedLevels,
} from "./kquants.js";

/**
 * The low-bit K-quants: 256-element super-blocks of sixteen 16-element sub-blocks.
 *
 * Q2_K (84 B): x = d * (sc & 15) * q - dmin * (sc >> 4), q 2 bits.
 *   0  16 B sub-block scales (low nibble: scale, high nibble: min), 16  64 B quants,
 *   80  f16 d, 82  f16 dmin.
 * Q3_K (110 B): x = d * (sc - 32) * q, q 3 bits in [-4, 3].
 *   0  32 B high bits (hmask), 32  64 B low 2-bit pairs, 96  12 B of 6-bit scales, 108  f16 d.
 *
 * Both store the low two bits the same way: element e = 128n + 32j + l (n < 2, j < 4, l < 32) is
 * bits 2j..2j+1 of quant byte 32n + l. Q3_K's third bit is bit 4n + j of hmask byte l, and it is set
 * when the value is q + 4 >= 4 (a clear bit subtracts 4). Element e belongs to sub-block e >> 4.
 * Q3_K's 16 scales: the low four bits of scale i are the low (i < 8) or high (i >= 8) nibble of
 * byte i & 7; the top two bits are bits 2(i >> 2)..2(i >> 2)+1 of byte 8 + (i & 3).
 *
 * Decoding: d * sc and dmin * m are exact in f32 (f16 by 4 or 6 bits), d * sc * q too, so each
 * value rounds once, at Q2_K's subtraction, as in ggml.
 */

// Module-local alias (see kquants.ts: imported bindings are slow property reads under tsx/vite).
const F16 = F16_TO_F32;

/** The quant bits (0..3) of element e of a Q2_K/Q3_K super-block whose quant bytes start at q. */
function low2(b: Uint8Array, q: number, e: number): number {
  return (b[q + 32 * (e >>> 7) + (e & 31)]! >>> (2 * ((e >>> 5) & 3))) & 3;
}

/** Q3_K's signed scale code (-32..31) of sub-block i, its 12 bytes at s. */
function q3Scale(b: Uint8Array, s: number, i: number): number {
  const lowBits = i < 8 ? b[s + i]! & 15 : b[s + i - 8]! >>> 4;
  const highBits = (b[s + 8 + (i & 3)]! >>> (2 * (i >>> 2))) & 3;
  return (lowBits | (highBits << 4)) - 32;
}

/** The value (-4..3) of element e of the Q3_K super-block at o. */
function q3Value(b: Uint8Array, o: number, e: number): number {
  const hi = (b[o + (e & 31)]! >>> (4 * (e >>> 7) + ((e >>> 5) & 3))) & 1;
  return low2(b, o + 32, e) - (hi !== 0 ? 0 : 4);
}

// ------------------------------------------------------------ Q2_K

const Q2_K: RowCodec = {
  type: GGMLType.Q2_K,
  blockSize: 256,
  typeSize: 84,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 84, o += 256) {
      const d = F16[src[so + 80]! | (src[so + 81]! << 8)]!;
      const dmin = F16[src[so + 82]! | (src[so + 83]! << 8)]!;
      for (let i = 0; i < 16; i++) {
        const sc = src[so + i]!;
        const dl = d * (sc & 15);
        const ml = dmin * (sc >>> 4);
        // dl * q and ml are exact f32 values; fround of their double difference is f32 subtraction.
        for (let e = 16 * i; e < 16 * i + 16; e++) dst[o + e] = dl * low2(src, so + 16, e) - ml;
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 84, xo += 256) {
      const d = F16[w[wo + 80]! | (w[wo + 81]! << 8)]!;
      const dmin = F16[w[wo + 82]! | (w[wo + 83]! << 8)]!;
      let sq = 0;
      let sx = 0;
      for (let i = 0; i < 16; i++) {
        const sc = w[wo + i]!;
        let qx = 0;
        let xs = 0;
        for (let e = 16 * i; e < 16 * i + 16; e++) {
          const v = x[xo + e]!;
          qx += low2(w, wo + 16, e) * v;
          xs += v;
        }
        sq += (sc & 15) * qx;
        sx += (sc >>> 4) * xs;
      }
      sum += d * sq - dmin * sx;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 256, o += 84) {
      quantizeAffineSuperBlock(src, si, 3, 16, 15, dst, o + 80);
      for (let i = 0; i < 16; i++) dst[o + i] = scCode[i]! | (mCode[i]! << 4);
      dst.fill(0, o + 16, o + 80);
      for (let e = 0; e < 256; e++) {
        const q = o + 16 + 32 * (e >>> 7) + (e & 31);
        dst[q] = dst[q]! | (levels[e]! << (2 * ((e >>> 5) & 3)));
      }
    }
  },
};

// ------------------------------------------------------------ Q3_K

const Q3_K: RowCodec = {
  type: GGMLType.Q3_K,
  blockSize: 256,
  typeSize: 110,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 110, o += 256) {
      const d = F16[src[so + 108]! | (src[so + 109]! << 8)]!;
      for (let i = 0; i < 16; i++) {
        const dl = d * q3Scale(src, so + 96, i);
        for (let e = 16 * i; e < 16 * i + 16; e++) dst[o + e] = dl * q3Value(src, so, e);
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 110, xo += 256) {
      const d = F16[w[wo + 108]! | (w[wo + 109]! << 8)]!;
      let acc = 0;
      for (let i = 0; i < 16; i++) {
        let qx = 0;
        for (let e = 16 * i; e < 16 * i + 16; e++) qx += q3Value(w, wo, e) * x[xo + e]!;
        acc += q3Scale(w, wo + 96, i) * qx;
      }
      sum += d * acc;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 256, o += 110) {
      // Levels in [-4, 3], scales in [-32, 31] (stored + 32 in 6 bits).
      putU16(dst, o + 108, quantizeSymmetricSuperBlock(src, si, 4, -32, 31));
      dst.fill(0, o, o + 108);
      for (let i = 0; i < 16; i++) {
        const c = signedCode[i]! + 32;
        const s = o + 96;
        dst[s + (i & 7)] = dst[s + (i & 7)]! | ((c & 15) << (i < 8 ? 0 : 4));
        dst[s + 8 + (i & 3)] = dst[s + 8 + (i & 3)]! | ((c >>> 4) << (2 * (i >>> 2)));
      }
      for (let e = 0; e < 256; e++) {
        const v = signedLevels[e]! + 4; // 0..7: low two bits, and the third bit set for v >= 4
        const q = o + 32 + 32 * (e >>> 7) + (e & 31);
        dst[q] = dst[q]! | ((v & 3) << (2 * ((e >>> 5) & 3)));
        if (v >= 4) dst[o + (e & 31)] = dst[o + (e & 31)]! | (1 << (4 * (e >>> 7) + ((e >>> 5) & 3)));
      }
    }
  },
};

export const LOW_KQUANT_CODECS: readonly RowCodec[] = [Q2_K, Q3_K];
