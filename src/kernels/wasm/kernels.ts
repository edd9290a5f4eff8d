// AssemblyScript, compiled by `npm run build:kernels` (scripts/build-kernels.mjs) into
// dist-wasm/kernels.wasm with SIMD128, -O3, the stub runtime and an imported memory.
// Not part of the TypeScript program: it uses asc's types (i32, usize, v128, f32x4, …).
//
// The JS side (src/kernels/wasm-kernels.ts) owns the memory and every address passed here: weights
// (copied in once, in their ggml block layout), the activations x (one row per token, zero-padded
// to a multiple of 4 floats), the output and a scratch area for decoded weight rows.
//
// matmul computes out[t, r] = Σ_c W[r, c] · x[t, c]. A weight row is decoded once to f32 (into
// scratch; F32 rows are read in place) and reused for every token of the batch.
//
// Batch invariance: every (row, token) dot product runs the same instruction sequence whatever the
// tile it is computed in (4 rows × 2 tokens, 4 × 1, 1 × 2, 1 × 1) and whatever nTokens is. Each
// (row, token) pair has its own single f32x4 accumulator; for c = 0, 4, 8, … it does
// acc = acc + w[c..c+4] * x[c..c+4] (lane j sums elements j, j + 4, j + 8, … in order), and the
// result is (acc[0] + acc[1]) + (acc[2] + acc[3]). The decoded weights are the same f32 values
// whatever the batch, WebAssembly float arithmetic is IEEE round-to-nearest with no fused
// multiply-add and no reassociation (neither Binaryen nor V8 reorders float operations), so a
// token's result does not depend on which other tokens share the call.

// ggml type numbers (src/gguf/types.ts).
const F32: i32 = 0;
const F16: i32 = 1;
const Q4_0: i32 = 2;
const Q4_1: i32 = 3;
const Q5_0: i32 = 6;
const Q5_1: i32 = 7;
const Q8_0: i32 = 8;
const Q4_K: i32 = 12;
const Q5_K: i32 = 13;
const Q6_K: i32 = 14;
const BF16: i32 = 30;

/** First free byte after this module's static data: the JS allocator starts above it. */
export function heapBase(): usize {
  return __heap_base;
}

// ------------------------------------------------------------------ f16
// No conversion here multiplies an f32 subnormal: x86 takes a microcode assist (~100 cycles) for
// each such operand, and small K-quant scales are often f16 subnormals.

/**
 * Exact f32 value of an f16 bit pattern: normals by moving the fields, subnormals through an integer
 * convert; a NaN keeps its payload and comes out quiet (as F16C's conversion and the reference do).
 */
function f16(h: u32): f32 {
  const em = h & 0x7fff;
  let v: f32;
  if (em < 0x0400)
    v = <f32>em * 5.9604644775390625e-8; // em · 2^-24: exact, and no subnormal operand
  else if (em < 0x7c00) v = reinterpret<f32>((em << 13) + (112 << 23));
  else if (em === 0x7c00) v = Infinity;
  else v = reinterpret<f32>((em << 13) | 0x7fc00000); // NaN: payload kept, made quiet (as F16C does)
  return reinterpret<f32>(reinterpret<u32>(v) | ((h & 0x8000) << 16));
}

/** f16x4: four f16 bit patterns (in the low halves of u32 lanes) to f32, exactly as f16() does. */
function f16x4(h: v128): v128 {
  const em = v128.and(h, i32x4.splat(0x7fff));
  const shifted = i32x4.shl(em, 13);
  const normal = i32x4.add(shifted, i32x4.splat(112 << 23));
  const nan = v128.and(i32x4.gt_s(em, i32x4.splat(0x7c00)), i32x4.splat(0x00400000));
  const special = v128.or(v128.or(shifted, i32x4.splat(0x7f800000)), nan);
  const small = f32x4.mul(f32x4.convert_i32x4_s(em), f32x4.splat(5.9604644775390625e-8));
  let v = v128.bitselect(special, normal, i32x4.gt_s(em, i32x4.splat(0x7bff)));
  v = v128.bitselect(small, v, i32x4.lt_s(em, i32x4.splat(0x0400)));
  return v128.or(v, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

/**
 * Decodes 8 f16 at src into 8 f32 at dst, right for normal numbers and zeros, and returns the lanes
 * where it is not (subnormals, infinities, NaNs), for the caller to redo with f16x4. The work is on
 * 16-bit lanes: the high half of each f32 is sign | (exponent + 112) | top 7 mantissa bits, the low
 * half the last 3 mantissa bits; then the halves are interleaved.
 */
function f16x8(src: usize, dst: usize): v128 {
  const h = v128.load(src);
  const em = v128.and(h, i16x8.splat(0x7fff));
  const zero = i16x8.eq(em, i16x8.splat(0));
  const hi = v128.or(
    v128.andnot(i16x8.add(i16x8.shr_u(em, 3), i16x8.splat(112 << 7)), zero),
    v128.and(h, i16x8.splat(-0x8000)),
  );
  const lo = i16x8.shl(h, 13);
  v128.store(dst, i16x8.shuffle(lo, hi, 0, 8, 1, 9, 2, 10, 3, 11));
  v128.store(dst, i16x8.shuffle(lo, hi, 4, 12, 5, 13, 6, 14, 7, 15), 16);
  // em + 0x400 < 0x800 (as i16) exactly when the exponent is 0 or 31.
  return v128.andnot(i16x8.lt_s(i16x8.add(em, i16x8.splat(0x0400)), i16x8.splat(0x0800)), zero);
}

/** Decodes n f16 (n a multiple of 4) exactly, 4 at a time. */
function f16Exact(src: usize, dst: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const h = i32x4.extend_low_i16x8_u(v128.load64_zero(src + ((<usize>i) << 1)));
    v128.store(dst + ((<usize>i) << 2), f16x4(h));
  }
}

/**
 * Decodes an f16 row (n a multiple of 4): groups of 32 go through the fast 8-lane path, and a group
 * with any subnormal, infinity or NaN is decoded again exactly (one branch per 32 elements).
 */
function f16Row(src: usize, dst: usize, n: i32): void {
  let i = 0;
  for (; i + 32 <= n; i += 32) {
    const s = src + ((<usize>i) << 1);
    const d = dst + ((<usize>i) << 2);
    const special = v128.or(
      v128.or(f16x8(s, d), f16x8(s + 16, d + 32)),
      v128.or(f16x8(s + 32, d + 64), f16x8(s + 48, d + 96)),
    );
    if (v128.any_true(special)) f16Exact(s, d, 32);
  }
  if (i < n) f16Exact(src + ((<usize>i) << 1), dst + ((<usize>i) << 2), n - i);
}

// ------------------------------------------------------------------ block decoding helpers

/** Stores 16 signed i8 lanes times d as 16 f32 at dst. */
function storeScaled(q: v128, d: v128, dst: usize): void {
  const lo = i16x8.extend_low_i8x16_s(q);
  const hi = i16x8.extend_high_i8x16_s(q);
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo)), d));
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo)), d), 16);
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi)), d), 32);
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi)), d), 48);
}

/** Stores 16 unsigned i8 lanes (< 128) as q * d + m, 16 f32 at dst. */
function storeAffine(q: v128, d: v128, m: v128, dst: usize): void {
  const lo = i16x8.extend_low_i8x16_u(q);
  const hi = i16x8.extend_high_i8x16_u(q);
  v128.store(dst, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_u(lo)), d), m));
  v128.store(dst, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_u(lo)), d), m), 16);
  v128.store(dst, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_u(hi)), d), m), 32);
  v128.store(dst, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_u(hi)), d), m), 48);
}

/** Stores 16 unsigned i8 lanes (< 128) as d * q - m, 16 f32 at dst (the K-quant form). */
function storeScaledMinus(q: v128, d: v128, m: v128, dst: usize): void {
  const lo = i16x8.extend_low_i8x16_u(q);
  const hi = i16x8.extend_high_i8x16_u(q);
  v128.store(dst, f32x4.sub(f32x4.mul(d, f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_u(lo))), m));
  v128.store(dst, f32x4.sub(f32x4.mul(d, f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_u(lo))), m), 16);
  v128.store(dst, f32x4.sub(f32x4.mul(d, f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_u(hi))), m), 32);
  v128.store(dst, f32x4.sub(f32x4.mul(d, f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_u(hi))), m), 48);
}

/** The fifth bits of a Q5_0/Q5_1 block as 0 or 16 per lane: elements 0..15 (half 0) or 16..31 (half 1). */
function fifthBits(qh: u32, half: i32): v128 {
  const v = i32x4.splat(qh);
  const spread =
    half === 0
      ? i8x16.swizzle(v, i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1))
      : i8x16.swizzle(v, i8x16(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const bit = i8x16(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  return v128.and(i8x16.eq(v128.and(spread, bit), bit), i8x16.splat(16));
}

/** 6-bit scale j (0..7) of a Q4_K/Q5_K block whose 12 scale bytes start at s. */
function kScale(s: usize, j: i32): u32 {
  if (j < 4) return load<u8>(s + j) & 63;
  return (load<u8>(s + j + 4) & 15) | ((load<u8>(s + j - 4) >> 6) << 4);
}

/** 6-bit min j (0..7) of a Q4_K/Q5_K block whose 12 scale bytes start at s. */
function kMin(s: usize, j: i32): u32 {
  if (j < 4) return load<u8>(s + j + 4) & 63;
  return (load<u8>(s + j + 4) >> 4) | ((load<u8>(s + j) >> 6) << 4);
}

// ------------------------------------------------------------------ row decoders

/**
 * Decodes the n-element row at src into n f32 at dst (n a multiple of 4 for float types, of the
 * block size for the others). Each element gets the value ggml's dequantize gives it, computed in
 * f32 (the scale products are exact, so each element is rounded once).
 */
function decodeRow(type: i32, src: usize, dst: usize, n: i32): void {
  if (type === F16) {
    f16Row(src, dst, n);
  } else if (type === BF16) {
    for (let i = 0; i < n; i += 4) {
      const h = i32x4.extend_low_i16x8_u(v128.load64_zero(src + ((<usize>i) << 1)));
      v128.store(dst + ((<usize>i) << 2), i32x4.shl(h, 16));
    }
  } else if (type === Q8_0) {
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 34, y += 128) {
      const d = f32x4.splat(f16(load<u16>(p)));
      storeScaled(v128.load(p, 2), d, y);
      storeScaled(v128.load(p, 18), d, y + 64);
    }
  } else if (type === Q4_0) {
    const mask = i8x16.splat(15);
    const eight = i8x16.splat(8);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 18, y += 128) {
      const d = f32x4.splat(f16(load<u16>(p)));
      const b = v128.load(p, 2);
      storeScaled(i8x16.sub(v128.and(b, mask), eight), d, y);
      storeScaled(i8x16.sub(i8x16.shr_u(b, 4), eight), d, y + 64);
    }
  } else if (type === Q4_1) {
    const mask = i8x16.splat(15);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 20, y += 128) {
      const d = f32x4.splat(f16(load<u16>(p)));
      const m = f32x4.splat(f16(load<u16>(p, 2)));
      const b = v128.load(p, 4);
      storeAffine(v128.and(b, mask), d, m, y);
      storeAffine(i8x16.shr_u(b, 4), d, m, y + 64);
    }
  } else if (type === Q5_0) {
    const mask = i8x16.splat(15);
    const sixteen = i8x16.splat(16);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 22, y += 128) {
      const d = f32x4.splat(f16(load<u16>(p)));
      const qh = load<u32>(p, 2);
      const b = v128.load(p, 6);
      storeScaled(i8x16.sub(v128.or(v128.and(b, mask), fifthBits(qh, 0)), sixteen), d, y);
      storeScaled(i8x16.sub(v128.or(i8x16.shr_u(b, 4), fifthBits(qh, 1)), sixteen), d, y + 64);
    }
  } else if (type === Q5_1) {
    const mask = i8x16.splat(15);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 24, y += 128) {
      const d = f32x4.splat(f16(load<u16>(p)));
      const m = f32x4.splat(f16(load<u16>(p, 2)));
      const qh = load<u32>(p, 4);
      const b = v128.load(p, 8);
      storeAffine(v128.or(v128.and(b, mask), fifthBits(qh, 0)), d, m, y);
      storeAffine(v128.or(i8x16.shr_u(b, 4), fifthBits(qh, 1)), d, m, y + 64);
    }
  } else if (type === Q4_K) {
    const mask = i8x16.splat(15);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 144, y += 1024) {
      const d = f16(load<u16>(p));
      const dmin = f16(load<u16>(p, 2));
      const s = p + 4;
      for (let c = 0; c < 4; c++) {
        const d1 = f32x4.splat(d * <f32>kScale(s, 2 * c));
        const m1 = f32x4.splat(dmin * <f32>kMin(s, 2 * c));
        const d2 = f32x4.splat(d * <f32>kScale(s, 2 * c + 1));
        const m2 = f32x4.splat(dmin * <f32>kMin(s, 2 * c + 1));
        const q = p + 16 + 32 * c;
        const yc = y + 256 * c;
        for (let l = 0; l < 32; l += 16) {
          const b = v128.load(q + l);
          storeScaledMinus(v128.and(b, mask), d1, m1, yc + 4 * l);
          storeScaledMinus(i8x16.shr_u(b, 4), d2, m2, yc + 128 + 4 * l);
        }
      }
    }
  } else if (type === Q5_K) {
    const mask = i8x16.splat(15);
    const one = i8x16.splat(1);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 176, y += 1024) {
      const d = f16(load<u16>(p));
      const dmin = f16(load<u16>(p, 2));
      const s = p + 4;
      for (let c = 0; c < 4; c++) {
        const d1 = f32x4.splat(d * <f32>kScale(s, 2 * c));
        const m1 = f32x4.splat(dmin * <f32>kMin(s, 2 * c));
        const d2 = f32x4.splat(d * <f32>kScale(s, 2 * c + 1));
        const m2 = f32x4.splat(dmin * <f32>kMin(s, 2 * c + 1));
        const q = p + 48 + 32 * c;
        const yc = y + 256 * c;
        for (let l = 0; l < 32; l += 16) {
          const b = v128.load(q + l);
          const h = v128.load(p + 16 + l);
          const h1 = i8x16.shl(v128.and(i8x16.shr_u(h, 2 * c), one), 4);
          const h2 = i8x16.shl(v128.and(i8x16.shr_u(h, 2 * c + 1), one), 4);
          storeScaledMinus(v128.or(v128.and(b, mask), h1), d1, m1, yc + 4 * l);
          storeScaledMinus(v128.or(i8x16.shr_u(b, 4), h2), d2, m2, yc + 128 + 4 * l);
        }
      }
    }
  } else if (type === Q6_K) {
    const mask = i8x16.splat(15);
    const three = i8x16.splat(3);
    const bias = i8x16.splat(32);
    for (let p = src, y = dst, e = dst + ((<usize>n) << 2); y < e; p += 210, y += 1024) {
      const d = f16(load<u16>(p, 208));
      for (let h = 0; h < 2; h++) {
        const ql = p + 64 * h;
        const qh = p + 128 + 32 * h;
        const sc = p + 192 + 8 * h;
        const yh = y + 512 * h;
        for (let l = 0; l < 32; l += 16) {
          const is = sc + (l >> 4);
          const a = v128.load(ql + l);
          const b = v128.load(ql + 32 + l);
          const hb = v128.load(qh + l);
          const q0 = v128.or(v128.and(a, mask), i8x16.shl(v128.and(hb, three), 4));
          const q1 = v128.or(v128.and(b, mask), i8x16.shl(v128.and(i8x16.shr_u(hb, 2), three), 4));
          const q2 = v128.or(i8x16.shr_u(a, 4), i8x16.shl(v128.and(i8x16.shr_u(hb, 4), three), 4));
          const q3 = v128.or(i8x16.shr_u(b, 4), i8x16.shl(i8x16.shr_u(hb, 6), 4));
          // d * sc is exact in f32 (11-bit by 8-bit), so each element is rounded once, as in ggml.
          storeScaled(i8x16.sub(q0, bias), f32x4.splat(d * <f32>load<i8>(is)), yh + 4 * l);
          storeScaled(i8x16.sub(q1, bias), f32x4.splat(d * <f32>load<i8>(is, 2)), yh + 128 + 4 * l);
          storeScaled(i8x16.sub(q2, bias), f32x4.splat(d * <f32>load<i8>(is, 4)), yh + 256 + 4 * l);
          storeScaled(i8x16.sub(q3, bias), f32x4.splat(d * <f32>load<i8>(is, 6)), yh + 384 + 4 * l);
        }
      }
    }
  }
}

/** Whether decodeRow handles this type (F32 needs no decoding). */
export function supports(type: i32): bool {
  return (
    type === F32 ||
    type === F16 ||
    type === BF16 ||
    type === Q8_0 ||
    type === Q4_0 ||
    type === Q4_1 ||
    type === Q5_0 ||
    type === Q5_1 ||
    type === Q4_K ||
    type === Q5_K ||
    type === Q6_K
  );
}

// ------------------------------------------------------------------ dot-product tiles
// Each tile computes a few (row, token) dot products over nb bytes (nb / 4 floats, a multiple of 4)
// with the one canonical accumulation described at the top of this file.

/** (a0 + a1) + (a2 + a3): the fixed horizontal sum that ends every dot product. */
function hsum(a: v128): f32 {
  return (
    f32x4.extract_lane(a, 0) +
    f32x4.extract_lane(a, 1) +
    (f32x4.extract_lane(a, 2) + f32x4.extract_lane(a, 3))
  );
}

/** Rows w0..w3 × tokens x0, x1; results at o (token 0) and o + ts (token 1), one f32 per row. */
function dot4x2(
  w0: usize,
  w1: usize,
  w2: usize,
  w3: usize,
  x0: usize,
  x1: usize,
  nb: usize,
  o: usize,
  ts: usize,
): void {
  let a00 = f32x4.splat(0);
  let a01 = f32x4.splat(0);
  let a10 = f32x4.splat(0);
  let a11 = f32x4.splat(0);
  let a20 = f32x4.splat(0);
  let a21 = f32x4.splat(0);
  let a30 = f32x4.splat(0);
  let a31 = f32x4.splat(0);
  for (let i: usize = 0; i < nb; i += 16) {
    const v0 = v128.load(x0 + i);
    const v1 = v128.load(x1 + i);
    let w = v128.load(w0 + i);
    a00 = f32x4.add(a00, f32x4.mul(w, v0));
    a01 = f32x4.add(a01, f32x4.mul(w, v1));
    w = v128.load(w1 + i);
    a10 = f32x4.add(a10, f32x4.mul(w, v0));
    a11 = f32x4.add(a11, f32x4.mul(w, v1));
    w = v128.load(w2 + i);
    a20 = f32x4.add(a20, f32x4.mul(w, v0));
    a21 = f32x4.add(a21, f32x4.mul(w, v1));
    w = v128.load(w3 + i);
    a30 = f32x4.add(a30, f32x4.mul(w, v0));
    a31 = f32x4.add(a31, f32x4.mul(w, v1));
  }
  store<f32>(o, hsum(a00));
  store<f32>(o, hsum(a10), 4);
  store<f32>(o, hsum(a20), 8);
  store<f32>(o, hsum(a30), 12);
  store<f32>(o + ts, hsum(a01));
  store<f32>(o + ts, hsum(a11), 4);
  store<f32>(o + ts, hsum(a21), 8);
  store<f32>(o + ts, hsum(a31), 12);
}

/** Rows w0..w3 × token x0; results at o, one f32 per row. */
function dot4x1(w0: usize, w1: usize, w2: usize, w3: usize, x0: usize, nb: usize, o: usize): void {
  let a0 = f32x4.splat(0);
  let a1 = f32x4.splat(0);
  let a2 = f32x4.splat(0);
  let a3 = f32x4.splat(0);
  for (let i: usize = 0; i < nb; i += 16) {
    const v = v128.load(x0 + i);
    a0 = f32x4.add(a0, f32x4.mul(v128.load(w0 + i), v));
    a1 = f32x4.add(a1, f32x4.mul(v128.load(w1 + i), v));
    a2 = f32x4.add(a2, f32x4.mul(v128.load(w2 + i), v));
    a3 = f32x4.add(a3, f32x4.mul(v128.load(w3 + i), v));
  }
  store<f32>(o, hsum(a0));
  store<f32>(o, hsum(a1), 4);
  store<f32>(o, hsum(a2), 8);
  store<f32>(o, hsum(a3), 12);
}

/** Row w0 × tokens x0, x1; results at o and o + ts. */
function dot1x2(w0: usize, x0: usize, x1: usize, nb: usize, o: usize, ts: usize): void {
  let a0 = f32x4.splat(0);
  let a1 = f32x4.splat(0);
  for (let i: usize = 0; i < nb; i += 16) {
    const w = v128.load(w0 + i);
    a0 = f32x4.add(a0, f32x4.mul(w, v128.load(x0 + i)));
    a1 = f32x4.add(a1, f32x4.mul(w, v128.load(x1 + i)));
  }
  store<f32>(o, hsum(a0));
  store<f32>(o + ts, hsum(a1));
}

/** Row w0 × token x0; result at o. */
function dot1x1(w0: usize, x0: usize, nb: usize, o: usize): void {
  let a = f32x4.splat(0);
  for (let i: usize = 0; i < nb; i += 16) a = f32x4.add(a, f32x4.mul(v128.load(w0 + i), v128.load(x0 + i)));
  store<f32>(o, hsum(a));
}

// ------------------------------------------------------------------ matmul

/**
 * out[t, r] = Σ_c W[r, c] · x[t, c] for r < rows, t < nTokens (out is nTokens × rows f32).
 *
 * w: the matrix, rows of rowBytes bytes in the ggml layout of `type` (float types are stored with
 * their rows zero-padded to colsPad elements). x: nTokens rows of colsPad f32, zero-padded.
 * scratch: room for 4 × colsPad f32 (decoded rows). colsPad is a multiple of 4.
 */
export function matmul(
  type: i32,
  w: usize,
  rowBytes: usize,
  rows: i32,
  colsPad: i32,
  x: usize,
  nTokens: i32,
  out: usize,
  scratch: usize,
): void {
  const nb = (<usize>colsPad) << 2; // bytes in one decoded row and in one x row
  const ts = (<usize>rows) << 2; // bytes between two tokens' rows of out
  const inPlace = type === F32;
  const s0 = scratch;
  const s1 = s0 + nb;
  const s2 = s1 + nb;
  const s3 = s2 + nb;
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const src = w + <usize>r * rowBytes;
    let p0 = src;
    let p1 = src + rowBytes;
    let p2 = p1 + rowBytes;
    let p3 = p2 + rowBytes;
    if (!inPlace) {
      decodeRow(type, p0, s0, colsPad);
      decodeRow(type, p1, s1, colsPad);
      decodeRow(type, p2, s2, colsPad);
      decodeRow(type, p3, s3, colsPad);
      p0 = s0;
      p1 = s1;
      p2 = s2;
      p3 = s3;
    }
    const o = out + ((<usize>r) << 2);
    let t = 0;
    for (; t + 2 <= nTokens; t += 2) {
      const xt = x + <usize>t * nb;
      dot4x2(p0, p1, p2, p3, xt, xt + nb, nb, o + <usize>t * ts, ts);
    }
    if (t < nTokens) dot4x1(p0, p1, p2, p3, x + <usize>t * nb, nb, o + <usize>t * ts);
  }
  for (; r < rows; r++) {
    let p0 = w + <usize>r * rowBytes;
    if (!inPlace) {
      decodeRow(type, p0, s0, colsPad);
      p0 = s0;
    }
    const o = out + ((<usize>r) << 2);
    let t = 0;
    for (; t + 2 <= nTokens; t += 2) {
      const xt = x + <usize>t * nb;
      dot1x2(p0, xt, xt + nb, nb, o + <usize>t * ts, ts);
    }
    if (t < nTokens) dot1x1(p0, x + <usize>t * nb, nb, o + <usize>t * ts);
  }
}

/** Decodes `rows` rows of a matrix into f32 rows of colsPad at dst (for tests and getRows). */
export function dequantizeRows(
  type: i32,
  w: usize,
  rowBytes: usize,
  rows: i32,
  colsPad: i32,
  dst: usize,
): void {
  const nb = (<usize>colsPad) << 2;
  for (let r = 0; r < rows; r++) {
    const src = w + <usize>r * rowBytes;
    const y = dst + <usize>r * nb;
    if (type === F32) memory.copy(y, src, nb);
    else decodeRow(type, src, y, colsPad);
  }
}
