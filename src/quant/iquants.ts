import { GGMLType } from "../gguf/types.js";
import { clamp, type RowCodec, rint } from "./codec.js";
import { F16_TO_F32, f32ToF16 } from "./fp16.js";
import { chooseF16Factor, putU16 } from "./kquants.js";
import { importanceWeights } from "./ksearch.js";

/**
 * The non-linear 4-bit types: each 4-bit code indexes a fixed table of 16 levels (IQ4_NL_VALUES,
 * denser near zero, as the weights of trained models are), times a block scale.
 *
 * IQ4_NL (18 B per 32): 0  f16 d, 2  16 B codes; byte l holds element l (low nibble) and element
 *   l + 16 (high nibble). x = d * V[code].
 * IQ4_XS (136 B per 256): 0  f16 d, 2  u16 high scale bits, 4  4 B low scale nibbles, 8  128 B
 *   codes. Eight sub-blocks of 32, each laid out as an IQ4_NL block's codes at 8 + 16·ib; its scale
 *   ls (6 bits) has the low nibble ib & 1 of byte 4 + (ib >> 1) and bits 2ib..2ib+1 of the u16 as
 *   its top bits. x = d * (ls - 32) * V[code].
 * Every decoded value is exact in f32 (f16 d by at most 6 + 7 bits), as ggml computes it.
 */

/** ggml's table of IQ4_NL / IQ4_XS levels. */
export const IQ4_NL_VALUES: readonly number[] = [
  -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
const V = Int8Array.from(IQ4_NL_VALUES);

// Module-local aliases (see kquants.ts: imported bindings are slow property reads under tsx/vite).
const F16 = F16_TO_F32;
const toF16 = f32ToF16;
const nearest = rint;
const limit = clamp;

/** The code whose level is nearest to t (levels in units of the block scale). */
function nearestCode(t: number): number {
  if (t <= -127) return 0;
  if (t >= 113) return 15;
  let lo = 0;
  let hi = 15;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (t < V[mid]!) hi = mid;
    else lo = mid;
  }
  return t - V[lo]! < V[hi]! - t ? lo : hi;
}

// ------------------------------------------------------------ quantizer scratch

const weights = new Float64Array(256);
const codes = new Uint8Array(256);
const subScale = new Float64Array(8);
const scaleImportance = new Float64Array(8);

/** Weighted squared error of x[xo..xo+32) against scale * V[code] with the nearest codes, written to codes[co..]. */
function codeBlock(x: Float32Array, xo: number, wo: number, scale: number, co: number): number {
  const inv = scale !== 0 ? 1 / scale : 0;
  let err = 0;
  for (let i = 0; i < 32; i++) {
    const v = x[xo + i]!;
    const c = nearestCode(v * inv);
    codes[co + i] = c;
    const e = scale * V[c]! - v;
    err += weights[wo + i]! * e * e;
  }
  return err;
}

/**
 * The least-squares scale of one 32-element block (importance weights at weights[wo..]): tries
 * steps that put the largest value at or near the table's -127 end, assigns the nearest levels,
 * solves for the best scale given them, and keeps the best; then re-assigns once for it. Returns
 * the scale (0 for an all-zero block); the codes for it are left in codes[0..32).
 */
function fitBlock(x: Float32Array, xo: number, wo: number): number {
  let amax = 0;
  let max = 0;
  for (let i = 0; i < 32; i++) {
    const v = x[xo + i]!;
    if (Math.abs(v) > amax) {
      amax = Math.abs(v);
      max = v;
    }
  }
  if (!(amax > 1e-30)) return 0;
  let best = max / -127;
  let bestScore = -1;
  for (let k = -12; k <= 12; k++) {
    const inv = -(127 + k) / max;
    let sxl = 0;
    let sll = 0;
    for (let i = 0; i < 32; i++) {
      const v = x[xo + i]!;
      const l = V[nearestCode(v * inv)]!;
      const wl = weights[wo + i]! * l;
      sxl += wl * v;
      sll += wl * l;
    }
    if (sll > 0 && sxl * sxl > bestScore * sll) {
      bestScore = (sxl * sxl) / sll;
      best = sxl / sll;
    }
  }
  codeBlock(x, xo, wo, best, 0);
  return best;
}

// ------------------------------------------------------------ IQ4_NL

const IQ4_NL: RowCodec = {
  type: GGMLType.IQ4_NL,
  blockSize: 32,
  typeSize: 18,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 18, o += 32) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      for (let l = 0; l < 16; l++) {
        const byte = src[so + 2 + l]!;
        dst[o + l] = d * V[byte & 15]!;
        dst[o + 16 + l] = d * V[byte >>> 4]!;
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 18, xo += 32) {
      const d = F16[w[wo]! | (w[wo + 1]! << 8)]!;
      let acc = 0;
      for (let l = 0; l < 16; l++) {
        const byte = w[wo + 2 + l]!;
        acc += V[byte & 15]! * x[xo + l]! + V[byte >>> 4]! * x[xo + 16 + l]!;
      }
      sum += d * acc;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 32, o += 18) {
      importanceWeights(src, si, 32, weights, 0);
      const scale = fitBlock(src, si, 0);
      // The stored f16 scale and its neighbours, codes re-assigned for each; the best one kept.
      const h0 = toF16(scale);
      let bestH = h0;
      let bestErr = Infinity;
      for (let k = -1; k <= 1; k++) {
        const h = h0 + k;
        if ((h & ~0x7fff) !== (h0 & ~0x7fff) || (h & 0x7c00) === 0x7c00) continue;
        const err = codeBlock(src, si, 0, F16[h]!, 0);
        if (err < bestErr) {
          bestErr = err;
          bestH = h;
        }
      }
      putU16(dst, o, bestH);
      codeBlock(src, si, 0, F16[bestH]!, 0);
      for (let l = 0; l < 16; l++) dst[o + 2 + l] = codes[l]! | (codes[16 + l]! << 4);
    }
  },
};

// ------------------------------------------------------------ IQ4_XS

/** IQ4_XS's scale ls - 32 (-32..31) of sub-block ib, the block at o. */
function xsScale(b: Uint8Array, o: number, ib: number): number {
  const lowBits = (b[o + 4 + (ib >>> 1)]! >>> (4 * (ib & 1))) & 15;
  const highBits = ((b[o + 2]! | (b[o + 3]! << 8)) >>> (2 * ib)) & 3;
  return (lowBits | (highBits << 4)) - 32;
}

const IQ4_XS: RowCodec = {
  type: GGMLType.IQ4_XS,
  blockSize: 256,
  typeSize: 136,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 136, o += 256) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      for (let ib = 0; ib < 8; ib++) {
        const dl = d * xsScale(src, so, ib);
        const q = so + 8 + 16 * ib;
        const y = o + 32 * ib;
        for (let l = 0; l < 16; l++) {
          const byte = src[q + l]!;
          dst[y + l] = dl * V[byte & 15]!;
          dst[y + 16 + l] = dl * V[byte >>> 4]!;
        }
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 136, xo += 256) {
      const d = F16[w[wo]! | (w[wo + 1]! << 8)]!;
      let acc = 0;
      for (let ib = 0; ib < 8; ib++) {
        const q = wo + 8 + 16 * ib;
        const y = xo + 32 * ib;
        let s = 0;
        for (let l = 0; l < 16; l++) {
          const byte = w[q + l]!;
          s += V[byte & 15]! * x[y + l]! + V[byte >>> 4]! * x[y + 16 + l]!;
        }
        acc += xsScale(w, wo, ib) * s;
      }
      sum += d * acc;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 256, o += 136) {
      let maxAbs = 0;
      let maxScale = 0;
      for (let ib = 0; ib < 8; ib++) {
        importanceWeights(src, si + 32 * ib, 32, weights, 32 * ib);
        const s = fitBlock(src, si + 32 * ib, 32 * ib);
        subScale[ib] = s;
        let e = 0;
        for (let i = 0; i < 32; i++) e += weights[32 * ib + i]! * V[codes[i]!]! * V[codes[i]!]!;
        scaleImportance[ib] = e;
        if (Math.abs(s) > maxAbs) {
          maxAbs = Math.abs(s);
          maxScale = s;
        }
      }
      dst.fill(0, o, o + 136);
      if (!(maxAbs > 1e-30)) continue; // all zero: d = 0 decodes every element to 0
      // The largest scale maps to -32, the end of the code range with one more step.
      const hd = chooseF16Factor(maxScale / -32, subScale, scaleImportance, 8, -32, 31);
      putU16(dst, o, hd);
      const d = F16[hd]!;
      let high = 0;
      for (let ib = 0; ib < 8; ib++) {
        const xo = si + 32 * ib;
        const c0 = d !== 0 ? limit(nearest(subScale[ib]! / d), -32, 31) : 0;
        let best = c0;
        let bestErr = Infinity;
        for (let c = Math.max(-32, c0 - 1); c <= Math.min(31, c0 + 1); c++) {
          const err = codeBlock(src, xo, 32 * ib, Math.fround(d * c), 0);
          if (err < bestErr) {
            bestErr = err;
            best = c;
          }
        }
        codeBlock(src, xo, 32 * ib, Math.fround(d * best), 0);
        const ls = best + 32;
        dst[o + 4 + (ib >>> 1)] = dst[o + 4 + (ib >>> 1)]! | ((ls & 15) << (4 * (ib & 1)));
        high |= (ls >>> 4) << (2 * ib);
        const q = o + 8 + 16 * ib;
        for (let l = 0; l < 16; l++) dst[q + l] = codes[l]! | (codes[16 + l]! << 4);
      }
      putU16(dst, o + 2, high);
    }
  },
};

export const IQUANT_CODECS: readonly RowCodec[] = [IQ4_NL, IQ4_XS];
