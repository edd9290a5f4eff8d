import { GGMLType } from "../gguf/types.js";
import { clamp, type RowCodec, rint } from "./codec.js";
import { F16_TO_F32, f32ToF16 } from "./fp16.js";
import { affineError, fit, fitAffine, fitSymmetric, importanceWeights, symmetricError } from "./ksearch.js";

/**
 * K-quants: 256-element super-blocks split into sub-blocks with their own
 * small integer scales, themselves scaled by f16 super-block factors.
 *
 * Q4_K (144 B) and Q5_K (176 B): eight sub-blocks of 32, x = d*sc*q - dmin*m.
 *   0  f16 d, 2  f16 dmin, 4  12 bytes of packed 6-bit (sc, m) pairs,
 *   Q4_K: 16  128 B nibbles.   Q5_K: 16  32 B high bits, 48  128 B nibbles.
 *   Scale packing, for sub-block j < 4: sc = byte[j] & 63, m = byte[j+4] & 63;
 *   for j >= 4 the low four bits come from byte[j+4] (sc low nibble, m high
 *   nibble) and the top two bits from the spare bits 6..7 of byte[j-4] (sc) and
 *   byte[j] (m).
 *   Nibbles: the row is four chunks of 64; nibble byte 32c + l holds element
 *   64c + l (sub-block 2c) low and 64c + 32 + l (sub-block 2c + 1) high. In
 *   Q5_K, high-bit byte l has element 64c + l's fifth bit at bit 2c and
 *   64c + 32 + l's at bit 2c + 1.
 *
 * Q6_K (210 B): sixteen sub-blocks of 16, x = d * sc * (q - 32), q 6 bits.
 *   0  128 B low nibbles (ql), 128  64 B high 2-bit pairs (qh),
 *   192  16 x i8 scales, 208  f16 d.
 *   Each half h (elements 128h..128h+127) uses ql[64h..], qh[32h..]; for l < 32:
 *   ql[l] low -> element l, ql[l+32] low -> l+32, ql[l] high -> l+64,
 *   ql[l+32] high -> l+96 (relative to the half); qh[l] bits 0-1, 2-3, 4-5, 6-7
 *   are the top bits of those four elements in that order. Element e uses
 *   scale index e >> 4.
 */

// Hot loops use module-local aliases of imported helpers: dev and test loaders (tsx, vite)
// turn imported bindings into property reads on a module object, several times slower.
const F16 = F16_TO_F32;
const toF16 = f32ToF16;
const nearest = rint;
const limit = clamp;

// ------------------------------------------------------------ 6-bit scale packing

/** Unpacked (sc, m) of the current Q4_K/Q5_K block: sc in [0, 8), m in [8, 16). */
const sm = new Uint8Array(16);

function unpackScaleMin(b: Uint8Array, o: number): void {
  for (let j = 0; j < 4; j++) {
    const lo = b[o + j]!;
    const mid = b[o + 4 + j]!;
    const hi = b[o + 8 + j]!;
    sm[j] = lo & 63;
    sm[8 + j] = mid & 63;
    sm[4 + j] = (hi & 15) | ((lo >>> 6) << 4);
    sm[12 + j] = (hi >>> 4) | ((mid >>> 6) << 4);
  }
}

/** Packs sc[0..8) and m[0..8) (each < 64) into the 12 scale bytes at `o`. */
function packScaleMin(b: Uint8Array, o: number, sc: Uint8Array, m: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    b[o + j] = sc[j]! | ((sc[j + 4]! >>> 4) << 6);
    b[o + 4 + j] = m[j]! | ((m[j + 4]! >>> 4) << 6);
    b[o + 8 + j] = (sc[j + 4]! & 15) | ((m[j + 4]! & 15) << 4);
  }
}

// ------------------------------------------------------------ quantizer scratch

/** Levels of the super-block last quantized (affine: 0..nmax; symmetric: -nmax..nmax-1), element e at e. */
export const levels = new Uint8Array(256);
export const signedLevels = new Int8Array(256);
const weights = new Float64Array(256); // per sub-block weights, kept for the final pass
const subScale = new Float64Array(16);
const subMin = new Float64Array(16);
const scaleImportance = new Float64Array(16);
const minImportance = new Float64Array(16);
/** Sub-block scale and min codes of the super-block last quantized. */
export const scCode = new Uint8Array(16);
export const mCode = new Uint8Array(16);
export const signedCode = new Int8Array(16);

/** Nearest code for value / unit in [lo, hi] (0 when unit is 0). */
function codeFor(value: number, unit: number, lo: number, hi: number): number {
  return unit !== 0 ? limit(nearest(value / unit), lo, hi) : 0;
}

/**
 * Picks the f16 super-block factor d for coding values[0..n) as integers in
 * [lo, hi], with d near `ideal`: tries `ideal` rounded to f16 and its three f16
 * neighbours each way, keeping the one whose codes reproduce the values with the
 * least importance-weighted squared error. The neighbours matter where f16 is
 * coarse: for small weights d falls in the f16 subnormal range, where plain
 * rounding can be percents off and the largest code would clip. There (a
 * subnormal `ideal`, a few significant bits) every step up to twice `ideal` is
 * tried: a larger d with smaller codes can land closer. Returns the f16 bit
 * pattern.
 */
export function chooseF16Factor(
  ideal: number,
  values: Float64Array,
  importance: Float64Array,
  n: number,
  lo: number,
  hi: number,
): number {
  const h0 = toF16(ideal);
  if ((h0 & 0x7fff) === 0) return h0;
  let best = h0;
  let bestErr = Infinity;
  const up = (h0 & 0x7c00) === 0 ? (h0 & 0x3ff) + 3 : 3;
  for (let k = -3; k <= up; k++) {
    const h = h0 + k;
    // Stay on the same side of zero and below infinity.
    if ((h & ~0x7fff) !== (h0 & ~0x7fff) || (h & 0x7fff) === 0 || (h & 0x7c00) === 0x7c00) continue;
    const d = F16[h]!;
    let err = 0;
    for (let j = 0; j < n; j++) {
      const e = values[j]! - d * limit(nearest(values[j]! / d), lo, hi);
      err += importance[j]! * e * e;
    }
    if (err < bestErr) {
      bestErr = err;
      best = h;
    }
  }
  return best;
}

export function putU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = v >>> 8;
}

/** sum w * L^2 over one sub-block: how much an error in its scale costs (per unit squared). */
function levelEnergy(w: Float64Array, wo: number, L: ArrayLike<number>, lo: number, n: number): number {
  let e = 0;
  for (let i = 0; i < n; i++) e += w[wo + i]! * L[lo + i]! * L[lo + i]!;
  return e;
}

/** sum w over one sub-block: how much an error in its min costs (per unit squared). */
function weightSum(w: Float64Array, wo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += w[wo + i]!;
  return s;
}

/**
 * Quantizes one 256-element super-block into `nSub` sub-blocks of `subLen` with integer scales and
 * mins in [0, codeMax], x = d*sc*q - dmin*m, q in [0, nmax] (Q4_K: 8 × 32, codes < 64, nmax 15;
 * Q5_K: nmax 31; Q2_K: 16 × 16, codes < 16, nmax 3): fits every sub-block, picks f16 d and dmin so
 * the scales and mins code well as multiples of them, then for each sub-block tries the
 * neighbouring (sc, m) codes and keeps the pair with the least error, re-assigning levels for the
 * scale that is actually stored. Writes d and dmin (f16) at bytes dOff and dOff + 2 of dst; the codes
 * end up in `scCode`/`mCode`, the levels in `levels`.
 */
export function quantizeAffineSuperBlock(
  src: Float32Array,
  si: number,
  nmax: number,
  nSub: number,
  codeMax: number,
  dst: Uint8Array,
  dOff: number,
): void {
  const subLen = 256 / nSub;
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < nSub; j++) {
    importanceWeights(src, si + subLen * j, subLen, weights, subLen * j);
    fitAffine(src, si + subLen * j, subLen, weights, subLen * j, nmax, levels, subLen * j);
    subScale[j] = fit.scale;
    subMin[j] = -fit.offset;
    scaleImportance[j] = levelEnergy(weights, subLen * j, levels, subLen * j, subLen);
    minImportance[j] = weightSum(weights, subLen * j, subLen);
    if (fit.scale > maxScale) maxScale = fit.scale;
    if (-fit.offset > maxMin) maxMin = -fit.offset;
  }
  const hd = chooseF16Factor(maxScale / codeMax, subScale, scaleImportance, nSub, 0, codeMax);
  const hmin = chooseF16Factor(maxMin / codeMax, subMin, minImportance, nSub, 0, codeMax);
  putU16(dst, dOff, hd);
  putU16(dst, dOff + 2, hmin);
  const d = F16[hd]!;
  const dmin = F16[hmin]!;

  for (let j = 0; j < nSub; j++) {
    const xo = si + subLen * j;
    const wo = subLen * j;
    const sc0 = codeFor(subScale[j]!, d, 0, codeMax);
    const m0 = codeFor(subMin[j]!, dmin, 0, codeMax);
    let bestSc = sc0;
    let bestM = m0;
    let bestErr = Infinity;
    for (let sc = Math.max(0, sc0 - 1); sc <= Math.min(codeMax, sc0 + 1); sc++) {
      for (let m = Math.max(0, m0 - 1); m <= Math.min(codeMax, m0 + 1); m++) {
        const err = affineError(
          src,
          xo,
          subLen,
          weights,
          wo,
          nmax,
          Math.fround(d * sc),
          -Math.fround(dmin * m),
        );
        if (err < bestErr) {
          bestErr = err;
          bestSc = sc;
          bestM = m;
        }
      }
    }
    scCode[j] = bestSc;
    mCode[j] = bestM;
    affineError(
      src,
      xo,
      subLen,
      weights,
      wo,
      nmax,
      Math.fround(d * bestSc),
      -Math.fround(dmin * bestM),
      levels,
      subLen * j,
    );
  }
}

// ------------------------------------------------------------ Q4_K

const Q4_K: RowCodec = {
  type: GGMLType.Q4_K,
  blockSize: 256,
  typeSize: 144,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 144, o += 256) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      const dmin = F16[src[so + 2]! | (src[so + 3]! << 8)]!;
      unpackScaleMin(src, so + 4);
      for (let c = 0; c < 4; c++) {
        const d1 = d * sm[2 * c]!;
        const m1 = dmin * sm[8 + 2 * c]!;
        const d2 = d * sm[2 * c + 1]!;
        const m2 = dmin * sm[9 + 2 * c]!;
        const q = so + 16 + 32 * c;
        const y = o + 64 * c;
        for (let l = 0; l < 32; l++) {
          const byte = src[q + l]!;
          dst[y + l] = d1 * (byte & 15) - m1;
          dst[y + 32 + l] = d2 * (byte >>> 4) - m2;
        }
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 144, xo += 256) {
      const d = F16[w[wo]! | (w[wo + 1]! << 8)]!;
      const dmin = F16[w[wo + 2]! | (w[wo + 3]! << 8)]!;
      unpackScaleMin(w, wo + 4);
      let sq = 0; // sum over sub-blocks of sc * sum(q * x)
      let sx = 0; // sum over sub-blocks of m * sum(x)
      for (let c = 0; c < 4; c++) {
        const q = wo + 16 + 32 * c;
        const y = xo + 64 * c;
        let qa = 0;
        let qb = 0;
        let xa = 0;
        let xb = 0;
        for (let l = 0; l < 32; l++) {
          const byte = w[q + l]!;
          const x0 = x[y + l]!;
          const x1 = x[y + 32 + l]!;
          qa += (byte & 15) * x0;
          qb += (byte >>> 4) * x1;
          xa += x0;
          xb += x1;
        }
        sq += sm[2 * c]! * qa + sm[2 * c + 1]! * qb;
        sx += sm[8 + 2 * c]! * xa + sm[9 + 2 * c]! * xb;
      }
      sum += d * sq - dmin * sx;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 256, o += 144) {
      quantizeAffineSuperBlock(src, si, 15, 8, 63, dst, o);
      packScaleMin(dst, o + 4, scCode, mCode);
      for (let c = 0; c < 4; c++) {
        const q = o + 16 + 32 * c;
        for (let l = 0; l < 32; l++) dst[q + l] = levels[64 * c + l]! | (levels[64 * c + 32 + l]! << 4);
      }
    }
  },
};

// ------------------------------------------------------------ Q5_K

const Q5_K: RowCodec = {
  type: GGMLType.Q5_K,
  blockSize: 256,
  typeSize: 176,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 176, o += 256) {
      const d = F16[src[so]! | (src[so + 1]! << 8)]!;
      const dmin = F16[src[so + 2]! | (src[so + 3]! << 8)]!;
      unpackScaleMin(src, so + 4);
      const qh = so + 16;
      for (let c = 0; c < 4; c++) {
        const d1 = d * sm[2 * c]!;
        const m1 = dmin * sm[8 + 2 * c]!;
        const d2 = d * sm[2 * c + 1]!;
        const m2 = dmin * sm[9 + 2 * c]!;
        const q = so + 48 + 32 * c;
        const y = o + 64 * c;
        const s1 = 2 * c;
        const s2 = 2 * c + 1;
        for (let l = 0; l < 32; l++) {
          const byte = src[q + l]!;
          const h = src[qh + l]!;
          dst[y + l] = d1 * ((byte & 15) | (((h >>> s1) & 1) << 4)) - m1;
          dst[y + 32 + l] = d2 * ((byte >>> 4) | (((h >>> s2) & 1) << 4)) - m2;
        }
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 176, xo += 256) {
      const d = F16[w[wo]! | (w[wo + 1]! << 8)]!;
      const dmin = F16[w[wo + 2]! | (w[wo + 3]! << 8)]!;
      unpackScaleMin(w, wo + 4);
      const qh = wo + 16;
      let sq = 0;
      let sx = 0;
      for (let c = 0; c < 4; c++) {
        const q = wo + 48 + 32 * c;
        const y = xo + 64 * c;
        const s1 = 2 * c;
        const s2 = 2 * c + 1;
        let qa = 0;
        let qb = 0;
        let xa = 0;
        let xb = 0;
        for (let l = 0; l < 32; l++) {
          const byte = w[q + l]!;
          const h = w[qh + l]!;
          const x0 = x[y + l]!;
          const x1 = x[y + 32 + l]!;
          qa += ((byte & 15) | (((h >>> s1) & 1) << 4)) * x0;
          qb += ((byte >>> 4) | (((h >>> s2) & 1) << 4)) * x1;
          xa += x0;
          xb += x1;
        }
        sq += sm[2 * c]! * qa + sm[2 * c + 1]! * qb;
        sx += sm[8 + 2 * c]! * xa + sm[9 + 2 * c]! * xb;
      }
      sum += d * sq - dmin * sx;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 256, o += 176) {
      quantizeAffineSuperBlock(src, si, 31, 8, 63, dst, o);
      packScaleMin(dst, o + 4, scCode, mCode);
      const qh = o + 16;
      dst.fill(0, qh, qh + 32);
      for (let c = 0; c < 4; c++) {
        const q = o + 48 + 32 * c;
        for (let l = 0; l < 32; l++) {
          const a = levels[64 * c + l]!;
          const z = levels[64 * c + 32 + l]!;
          dst[q + l] = (a & 15) | ((z & 15) << 4);
          dst[qh + l] = dst[qh + l]! | ((a >>> 4) << (2 * c)) | ((z >>> 4) << (2 * c + 1));
        }
      }
    }
  },
};

// ------------------------------------------------------------ Q6_K

const Q6_K: RowCodec = {
  type: GGMLType.Q6_K,
  blockSize: 256,
  typeSize: 210,
  dequantize(src, so, dst, o, nb) {
    for (let b = 0; b < nb; b++, so += 210, o += 256) {
      const d = F16[src[so + 208]! | (src[so + 209]! << 8)]!;
      for (let h = 0; h < 2; h++) {
        const ql = so + 64 * h;
        const qh = so + 128 + 32 * h;
        const sc = so + 192 + 8 * h;
        const y = o + 128 * h;
        for (let l = 0; l < 32; l++) {
          const is = sc + (l >>> 4);
          const lo0 = src[ql + l]!;
          const lo1 = src[ql + 32 + l]!;
          const hi = src[qh + l]!;
          // d * sc is exact in f32 (11-bit by 8-bit mantissas), so this rounds once, like ggml.
          dst[y + l] = d * ((src[is]! << 24) >> 24) * (((lo0 & 15) | ((hi & 3) << 4)) - 32);
          dst[y + 32 + l] = d * ((src[is + 2]! << 24) >> 24) * (((lo1 & 15) | (((hi >>> 2) & 3) << 4)) - 32);
          dst[y + 64 + l] = d * ((src[is + 4]! << 24) >> 24) * (((lo0 >>> 4) | (((hi >>> 4) & 3) << 4)) - 32);
          dst[y + 96 + l] = d * ((src[is + 6]! << 24) >> 24) * (((lo1 >>> 4) | ((hi >>> 6) << 4)) - 32);
        }
      }
    }
  },
  dot(w, wo, x, xo, nb) {
    let sum = 0;
    for (let b = 0; b < nb; b++, wo += 210, xo += 256) {
      const d = F16[w[wo + 208]! | (w[wo + 209]! << 8)]!;
      let acc = 0;
      for (let h = 0; h < 2; h++) {
        const ql = wo + 64 * h;
        const qh = wo + 128 + 32 * h;
        const sc = wo + 192 + 8 * h;
        const y = xo + 128 * h;
        // Two groups of 16 per 32-lane pass; each lane set touches four sub-blocks.
        for (let g = 0; g < 2; g++) {
          let s0 = 0;
          let s1 = 0;
          let s2 = 0;
          let s3 = 0;
          for (let l = 16 * g; l < 16 * g + 16; l++) {
            const lo0 = w[ql + l]!;
            const lo1 = w[ql + 32 + l]!;
            const hi = w[qh + l]!;
            s0 += (((lo0 & 15) | ((hi & 3) << 4)) - 32) * x[y + l]!;
            s1 += (((lo1 & 15) | (((hi >>> 2) & 3) << 4)) - 32) * x[y + 32 + l]!;
            s2 += (((lo0 >>> 4) | (((hi >>> 4) & 3) << 4)) - 32) * x[y + 64 + l]!;
            s3 += (((lo1 >>> 4) | ((hi >>> 6) << 4)) - 32) * x[y + 96 + l]!;
          }
          const is = sc + g;
          acc +=
            ((w[is]! << 24) >> 24) * s0 +
            ((w[is + 2]! << 24) >> 24) * s1 +
            ((w[is + 4]! << 24) >> 24) * s2 +
            ((w[is + 6]! << 24) >> 24) * s3;
        }
      }
      sum += d * acc;
    }
    return sum;
  },
  quantize(src, si, nb, dst, o) {
    for (let b = 0; b < nb; b++, si += 256, o += 210) {
      quantizeQ6KSuperBlock(src, si, dst, o);
    }
  },
};

/**
 * Quantizes one 256-element super-block into 16 sub-blocks of 16 with signed integer scales in
 * [codeLo, codeHi], x = d*sc*q, q in [-nmax, nmax - 1] (Q6_K: i8 scales, nmax 32; Q3_K: 6-bit
 * scales, nmax 4). Returns d's f16 bits (0 for an all-zero block: codes and levels all 0); the codes
 * end up in `signedCode`, the levels in `signedLevels`.
 */
export function quantizeSymmetricSuperBlock(
  src: Float32Array,
  si: number,
  nmax: number,
  codeLo: number,
  codeHi: number,
): number {
  let maxAbs = 0;
  let maxScale = 0;
  for (let j = 0; j < 16; j++) {
    importanceWeights(src, si + 16 * j, 16, weights, 16 * j);
    fitSymmetric(src, si + 16 * j, 16, weights, 16 * j, nmax, signedLevels, 16 * j);
    subScale[j] = fit.scale;
    scaleImportance[j] = levelEnergy(weights, 16 * j, signedLevels, 16 * j, 16);
    if (Math.abs(fit.scale) > maxAbs) {
      maxAbs = Math.abs(fit.scale);
      maxScale = fit.scale;
    }
  }
  signedCode.fill(0);
  if (!(maxAbs > 1e-30)) {
    signedLevels.fill(0); // all zero: d = 0, every level at the zero point
    return 0;
  }
  // The largest scale maps to codeLo, the end of the code range with one more step.
  const hd = chooseF16Factor(maxScale / codeLo, subScale, scaleImportance, 16, codeLo, codeHi);
  const d = F16[hd]!;
  for (let j = 0; j < 16; j++) {
    const xo = si + 16 * j;
    const wo = 16 * j;
    const c0 = codeFor(subScale[j]!, d, codeLo, codeHi);
    let best = c0;
    let bestErr = Infinity;
    for (let c = Math.max(codeLo, c0 - 1); c <= Math.min(codeHi, c0 + 1); c++) {
      const err = symmetricError(src, xo, 16, weights, wo, nmax, Math.fround(d * c));
      if (err < bestErr) {
        bestErr = err;
        best = c;
      }
    }
    signedCode[j] = best;
    symmetricError(src, xo, 16, weights, wo, nmax, Math.fround(d * best), signedLevels, 16 * j);
  }
  return hd;
}

function quantizeQ6KSuperBlock(src: Float32Array, si: number, dst: Uint8Array, o: number): void {
  const hd = quantizeSymmetricSuperBlock(src, si, 32, -128, 127);
  putU16(dst, o + 208, hd);
  for (let j = 0; j < 16; j++) dst[o + 192 + j] = signedCode[j]! & 0xff;
  for (let h = 0; h < 2; h++) {
    const ql = o + 64 * h;
    const qh = o + 128 + 32 * h;
    const e = 128 * h;
    for (let l = 0; l < 32; l++) {
      const q0 = signedLevels[e + l]! + 32;
      const q1 = signedLevels[e + 32 + l]! + 32;
      const q2 = signedLevels[e + 64 + l]! + 32;
      const q3 = signedLevels[e + 96 + l]! + 32;
      dst[ql + l] = (q0 & 15) | ((q2 & 15) << 4);
      dst[ql + 32 + l] = (q1 & 15) | ((q3 & 15) << 4);
      dst[qh + l] = (q0 >>> 4) | ((q1 >>> 4) << 2) | ((q2 >>> 4) << 4) | ((q3 >>> 4) << 6);
    }
  }
}

export const KQUANT_CODECS: readonly RowCodec[] = [Q4_K, Q5_K, Q6_K];
