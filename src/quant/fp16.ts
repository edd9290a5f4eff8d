/**
 * IEEE half precision (f16) and bfloat16 (bf16) conversions to and from f32.
 *
 * f16 -> f32 goes through a 65536-entry table built once at load (256 KiB), so
 * reading a block scale is one array index. f32 -> f16 and f32 -> bf16 round to
 * nearest, ties to even, the way F16C hardware and ggml's bf16 helper do.
 */

// One shared scratch word to move bits between f32 and u32 without allocating.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Exact f32 value of an f16 bit pattern, computed from its fields (used to build the table). */
function decodeF16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) {
    if (mant === 0) return sign * Infinity;
    // A NaN: keep its payload and sign so a round trip through f32 is lossless.
    scratchU32[0] = ((h & 0x8000) << 16) | 0x7f800000 | (mant << 13);
    return scratchF32[0]!;
  }
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/** F16_TO_F32[h] is the f32 value of the f16 bit pattern h. */
export const F16_TO_F32: Float32Array = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = decodeF16(h);
  return table;
})();

/** f32 value of an f16 bit pattern. */
export function f16ToF32(h: number): number {
  return F16_TO_F32[h & 0xffff]!;
}

/** f16 bit pattern nearest to `value` (ties to even; overflow gives infinity; NaN stays NaN). */
export function f32ToF16(value: number): number {
  scratchF32[0] = value;
  const bits = scratchU32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;

  if (exp === 0xff) {
    // Infinity keeps a zero mantissa; a NaN keeps its top payload bits and is forced quiet.
    return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  }

  const e = exp - 112; // rebias: f32 bias 127, f16 bias 15
  if (e >= 0x1f) return sign | 0x7c00; // too large even before rounding

  if (e <= 0) {
    // Result is an f16 subnormal (or zero): value / 2^-24 = (1.mant) * 2^(e + 9).
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    const full = mant | 0x800000; // implicit leading one
    const shift = 14 - e; // 14..24
    let q = full >>> shift;
    const rest = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rest > half || (rest === half && q & 1)) q++;
    return sign | q; // a carry out of the mantissa lands on the smallest normal, as it should
  }

  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry may round up to infinity, correctly
  return sign | h;
}

/** f32 value of a bf16 bit pattern (bf16 is the top half of an f32). */
export function bf16ToF32(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16;
  return scratchF32[0]!;
}

/** bf16 bit pattern nearest to `value` (ties to even; NaN stays a quiet NaN). */
export function f32ToBF16(value: number): number {
  scratchF32[0] = value;
  const bits = scratchU32[0]!;
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  // Add just under half an ulp, plus one when the kept part is odd, then truncate.
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) / 65536) & 0xffff;
}

/** Reads the little-endian f16 at `offset` of `bytes` as an f32 value. */
export function readF16(bytes: Uint8Array, offset: number): number {
  return F16_TO_F32[bytes[offset]! | (bytes[offset + 1]! << 8)]!;
}

/** Writes `value` as a little-endian f16 at `offset` of `bytes`; returns the f32 value actually stored. */
export function writeF16(bytes: Uint8Array, offset: number, value: number): number {
  const h = f32ToF16(value);
  bytes[offset] = h & 0xff;
  bytes[offset + 1] = h >>> 8;
  return F16_TO_F32[h]!;
}
