// AssemblyScript, compiled by `npm run build:kernels` (scripts/build-kernels.mjs) into
// dist-wasm/kernels.wasm with SIMD128, -O3, the stub runtime and an imported memory.
// Not part of the TypeScript program: it uses asc's types (i32, usize, v128, f32x4, …).
//
// The JS side (src/kernels/wasm-kernels.ts) owns the memory (shared, so that views of it survive its
// growth) and every address passed here: weights (copied in once: float types in their ggml layout,
// quantized types repacked by `pack`), activations, KV pools, outputs and scratch areas. Functions
// marked `// @inline` get AssemblyScript's @inline decorator from the build script.
//
// Two matmul paths, chosen by weight type (never by batch size):
//
// - Quantized types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), `matmulQuant`: the
//   activations are quantized once per call to 8-bit blocks exactly as llama.cpp quantizes them
//   (Q8_0/Q8_1 for the legacy types, Q8_K for the K-quants; see quantizeX), and each (row, block
//   of 32) is an exact integer dot product scaled in f32. Four rows are computed at once, one per
//   lane. For one token (two in the simd build) the weights are unpacked in registers to i16
//   (i32x4.dot_i16x8_s); from 2 tokens on in the relaxed build a group of 4 rows is unpacked once
//   to scratch as bytes for the relaxed 8-bit dot (matmulPacked8; Q8_0 only where that dot is
//   u8 × i8), elsewhere to i16 from unpackMin tokens on. The integer sums are the same whichever
//   computes them.
//   Per (row r, token t) the result is, over the blocks j in order,
//     acc = acc + f32(I[r,j,t]) · (S[r,j] · xs[t,j])          (then ± M[r,j] · xb[t,j] for the
//   affine types), where I is the exact integer Σ q·xq over the block, S, M the block's scale and
//   minimum (exact f32 values) and xs, xb the token's block scale and scale·Σxq.
// - Float types (F32, F16, BF16), `matmul`: f32 arithmetic on the exact weight values; each
//   (row, token) pair has its own f32x4 accumulator, acc = acc + w[c..c+4] * x[c..c+4] for
//   c = 0, 4, 8, … (lane j sums elements j, j + 4, … in order), then (acc0 + acc1) + (acc2 + acc3).
//
// Batch invariance: in both paths a (row, token) result is the fixed sequence of IEEE f32
// operations above on values that do not depend on the other tokens (the integer parts are exact,
// x is quantized per token, decoded weights are exact), whatever tile or code path (fused or
// unpacked to scratch, 1 or 2 tokens) computes it. WebAssembly float arithmetic is round-to-nearest
// with no fused multiply-add, and neither Binaryen nor V8 reorders float operations, so a token's
// result does not depend on which other tokens share the call.

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

import {
  isLowBit,
  lowBitDequantizeGroup,
  lowBitGroupBytes,
  lowBitMatmulPart,
  lowBitPack,
  lowBitPartBytes,
  lowBitQuantize,
  lowBitScratchBytes,
} from "./low-bit";

/** First free byte after this module's static data: the JS allocator starts above it. */
export function heapBase(): usize {
  return __heap_base;
}

/** Whether matmul handles this type: 2 packed (quantized, matmulQuant), 1 float (matmul), 0 not. */
export function supports(type: i32): i32 {
  if (type === F32 || type === F16 || type === BF16) return 1;
  return groupStride(type) !== 0 || isLowBit(type) ? 2 : 0;
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

/**
 * The f16 bit pattern nearest to x, as F16C's conversion (ggml's on x86) gives it: ties to even;
 * above 65504 + half an ulp, infinity; f16 subnormals exact (multiples of 2^-24, rounded by adding
 * 0.5, whose ulp is 2^-24); a NaN keeps its top 10 payload bits and comes out quiet.
 */
function f16Bits(x: f32): u32 {
  const b = reinterpret<u32>(x);
  const a = b & 0x7fffffff;
  const sign = (b >> 16) & 0x8000;
  if (a >= 0x7f800000) return sign | (a === 0x7f800000 ? 0x7c00 : 0x7e00 | ((a >> 13) & 0x3ff));
  if (a < 0x38800000) return sign | (reinterpret<u32>(reinterpret<f32>(a) + 0.5) - 0x3f000000);
  // Rebias the exponent (−112 << 23), add just under half an ulp plus the kept part's last bit, cut.
  return sign | min<u32>((a + 0xc8000fff + ((a >> 13) & 1)) >> 13, 0x7c00);
}

/**
 * f16Bits of four f32 lanes (results in the low halves of u32 lanes), for every lane that is not a
 * NaN (a NaN lane comes out as infinity: the caller redoes it with f16Bits). Finite values too large
 * for f16, and infinities, give infinity through the clamp at 0x7c00.
 */
// @inline
function f16x4Bits(x: v128): v128 {
  const a = v128.and(x, i32x4.splat(0x7fffffff));
  const odd = v128.and(i32x4.shr_u(a, 13), i32x4.splat(1));
  const big = i32x4.shr_u(i32x4.add(i32x4.add(a, i32x4.splat(<i32>0xc8000fff)), odd), 13);
  const normal = i32x4.min_u(big, i32x4.splat(0x7c00));
  const small = i32x4.sub(f32x4.add(a, f32x4.splat(0.5)), i32x4.splat(0x3f000000));
  const h = v128.bitselect(small, normal, i32x4.lt_s(a, i32x4.splat(0x38800000)));
  return v128.or(h, i32x4.shr_u(v128.and(x, i32x4.splat(<i32>0x80000000)), 16));
}

/**
 * Stores n floats at src as f16 at dst: four at a time through f16x4Bits, a group with a NaN and the
 * last n mod 4 through f16Bits.
 */
function storeRowF16(dst: usize, src: usize, n: i32): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const x = v128.load(src + ((<usize>i) << 2));
    const d = dst + ((<usize>i) << 1);
    if (v128.any_true(i32x4.gt_s(v128.and(x, i32x4.splat(0x7fffffff)), i32x4.splat(0x7f800000)))) {
      for (let l = 0; l < 4; l++)
        store<u16>(d + ((<usize>l) << 1), f16Bits(load<f32>(src + ((<usize>(i + l)) << 2))));
      continue;
    }
    const h = f16x4Bits(x);
    v128.store64_lane(d, i16x8.narrow_i32x4_u(h, h), 0);
  }
  for (; i < n; i++) store<u16>(dst + ((<usize>i) << 1), f16Bits(load<f32>(src + ((<usize>i) << 2))));
}

// ------------------------------------------------------------------ block decoding helpers

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

// ------------------------------------------------------------------ float row decoders

/** Decodes an F16 or BF16 row of n elements (n a multiple of 4) into n f32 at dst, exactly. */
function decodeFloatRow(type: i32, src: usize, dst: usize, n: i32): void {
  if (type === F16) {
    f16Row(src, dst, n);
  } else {
    for (let i = 0; i < n; i += 4) {
      const h = i32x4.extend_low_i16x8_u(v128.load64_zero(src + ((<usize>i) << 1)));
      v128.store(dst + ((<usize>i) << 2), i32x4.shl(h, 16));
    }
  }
}

// ------------------------------------------------------------------ packed quantized weights
//
// Quantized matrices are repacked once (pack) into groups of 4 rows (the last group padded with
// rows of zeros). Within a group the data of the 4 rows is interleaved block by block, with the
// scales already converted to f32 (exactly) and laid out as one f32x4 per block (lane = row), so
// the kernels compute 4 rows at once with one lane per row. Per 32-element block j (legacy types)
// or 256-element super-block s (K-quants), at group offset j·stride (s·stride):
//
//   Q8_0  144 B: S[4] f32 | 4 rows × 32 i8
//   Q4_0   80 B: S[4]     | 4 rows × 16 B nibbles (ggml order: element l low, l + 16 high)
//   Q4_1   96 B: S[4] | M[4] f32 | 4 rows × 16 B nibbles
//   Q5_0  144 B: S[4]        | 4 rows × 32 u8: q (0..31), element l at byte l (expanded at pack)
//   Q5_1  160 B: S[4] | M[4] | 4 rows × 32 u8: q (0..31)
//   Q4_K  608 B: D[4] | DMIN[4] f32 | SC[8 sub-blocks][4 rows] u8 | MN[8][4] u8 | 4 rows × 128 B nibbles
//   Q5_K  736 B: as Q4_K | 4 rows × 32 B high bits | 4 rows × 128 B nibbles
//   Q6_K 1104 B: D[4] f32 | 4 rows × 16 i8 scales | 4 rows × 256 i8: q − 32, element e at byte e
//
// The quant bits keep ggml's packing (the same bytes, moved), so weights take about as much memory
// as in the file (Q8_0 36 B per block instead of 34, Q4_K 152 per 256 instead of 144), except Q5_0
// and Q5_1: their fifth bits, spread over a u32 per block, cost the kernels five operations per
// vector to merge (1.7× slower than Q8_0 per weight), so pack merges them once and stores one byte
// per weight, as Q8_0 does (36 B / 40 B per block instead of 22 / 24; same values, same results);
// and Q6_K likewise (q − 32 as a signed byte: 276 B per 256 weights and row instead of 210; the
// one-token matvec 5 → 9 GMAC/s on 4096-wide rows).

/** Elements per block: 32 for the legacy types, 256 for the K-quants. */
function superBlock(type: i32): i32 {
  return type === Q4_K || type === Q5_K || type === Q6_K ? 256 : 32;
}

/** Bytes of one 4-row group per block (legacy) or super-block (K-quants). */
// @inline
function groupStride(type: i32): usize {
  if (type === Q8_0) return 144;
  if (type === Q4_0) return 80;
  if (type === Q4_1) return 96;
  if (type === Q5_0) return 144;
  if (type === Q5_1) return 160;
  if (type === Q4_K) return 608;
  if (type === Q5_K) return 736;
  if (type === Q6_K) return 1104;
  return 0;
}

/** Bytes of one packed group of 4 rows of `cols` elements (0: not a packed type). */
export function groupBytes(type: i32, cols: i32): usize {
  if (isLowBit(type)) return lowBitGroupBytes(type, cols); // Q2_K, Q3_K, IQ4_NL, IQ4_XS: low-bit.ts
  return groupStride(type) * <usize>(cols / superBlock(type));
}

/**
 * One Q5_0/Q5_1 block (ggml: 16 bytes of nibbles at qs, element l low and l + 16 high; the fifth bit
 * of element l is bit l of qh) as 32 bytes at dst, q of element l at byte l.
 */
function expandQ5(qh: u32, qs: usize, dst: usize): void {
  for (let l = 0; l < 16; l++) {
    const byte = <u32>load<u8>(qs + <usize>l);
    store<u8>(dst + <usize>l, <u8>((byte & 15) | (((qh >> l) & 1) << 4)));
    store<u8>(dst + <usize>(l + 16), <u8>((byte >> 4) | (((qh >> (l + 16)) & 1) << 4)));
  }
}

/**
 * One Q6_K super-block's 256 six-bit values (ggml: per half h of 128 elements, 64 bytes of low
 * nibbles at ql + 64h and 32 bytes of high bit pairs at qh + 32h; element 128h + 32m + l has the
 * low nibble (m < 2) or high nibble (m ≥ 2) of ql byte l + 32·(m & 1) and bits 2m, 2m + 1 of qh byte
 * l) as 256 signed bytes q − 32 at dst, element e at byte e.
 */
function expandQ6(ql: usize, dst: usize): void {
  const qh = ql + 128;
  for (let h = 0; h < 2; h++) {
    for (let m = 0; m < 4; m++) {
      for (let l = 0; l < 32; l++) {
        const lo = (<u32>load<u8>(ql + <usize>(64 * h + l + 32 * (m & 1))) >> (4 * (m >> 1))) & 15;
        const hi = ((<u32>load<u8>(qh + <usize>(32 * h + l)) >> (2 * m)) & 3) << 4;
        store<i8>(dst + <usize>(128 * h + 32 * m + l), <i8>(<i32>(lo | hi) - 32));
      }
    }
  }
}

/**
 * Copies n16 × 16 bytes from src to dst (unaligned v128 loads and stores): pack's block copies,
 * which memory.copy makes a call into the engine each (about 45% of loading an 8-bit model went to
 * pack when it used memory.copy).
 */
// @inline
function copy16s(dst: usize, src: usize, n16: i32): void {
  for (let i = 0; i < n16; i++) v128.store(dst + ((<usize>i) << 4), v128.load(src + ((<usize>i) << 4)));
}

/**
 * Thread `part`'s share of packing a matrix of `rows` rows of ggml blocks at src (rowBytes apart)
 * into groups of 4 rows at dst (groupBytes(type, cols) apart): groups part·G/parts …
 * (part+1)·G/parts − 1 of G = ⌈rows/4⌉, each packed by pack.
 */
export function packPart(
  type: i32,
  src: usize,
  rowBytes: usize,
  rows: i32,
  cols: i32,
  dst: usize,
  part: i32,
  parts: i32,
): void {
  const gb = groupBytes(type, cols);
  const r1 = min(rows, partStart(rows, part + 1, parts));
  for (let r = partStart(rows, part, parts); r < r1; r += 4) {
    pack(type, src + <usize>r * rowBytes, rowBytes, min(4, r1 - r), cols, dst + <usize>(r >> 2) * gb);
  }
}

/**
 * Packs nRows (1..4) rows of ggml blocks at src (rows rowBytes apart) into one group at dst
 * (groupBytes(type, cols) bytes; rows nRows..3 are zeros).
 */
export function pack(type: i32, src: usize, rowBytes: usize, nRows: i32, cols: i32, dst: usize): void {
  if (isLowBit(type)) {
    lowBitPack(type, src, rowBytes, nRows, cols, dst);
    return;
  }
  const stride = groupStride(type);
  const n = cols / superBlock(type);
  if (nRows < 4) memory.fill(dst, 0, stride * <usize>n);
  for (let r = 0; r < nRows; r++) {
    const row = src + <usize>r * rowBytes;
    const r4 = (<usize>r) << 2;
    const r16 = (<usize>r) << 4;
    for (let j = 0; j < n; j++) {
      const b = dst + <usize>j * stride;
      if (type === Q8_0) {
        const p = row + <usize>j * 34;
        store<f32>(b + r4, f16(load<u16>(p)));
        copy16s(b + 16 + ((<usize>r) << 5), p + 2, 2);
      } else if (type === Q4_0) {
        const p = row + <usize>j * 18;
        store<f32>(b + r4, f16(load<u16>(p)));
        copy16s(b + 16 + r16, p + 2, 1);
      } else if (type === Q4_1) {
        const p = row + <usize>j * 20;
        store<f32>(b + r4, f16(load<u16>(p)));
        store<f32>(b + 16 + r4, f16(load<u16>(p, 2)));
        copy16s(b + 32 + r16, p + 4, 1);
      } else if (type === Q5_0) {
        const p = row + <usize>j * 22;
        store<f32>(b + r4, f16(load<u16>(p)));
        expandQ5(load<u32>(p, 2), p + 6, b + 16 + ((<usize>r) << 5));
      } else if (type === Q5_1) {
        const p = row + <usize>j * 24;
        store<f32>(b + r4, f16(load<u16>(p)));
        store<f32>(b + 16 + r4, f16(load<u16>(p, 2)));
        expandQ5(load<u32>(p, 4), p + 8, b + 32 + ((<usize>r) << 5));
      } else if (type === Q4_K || type === Q5_K) {
        const p = row + <usize>j * (type === Q4_K ? 144 : 176);
        store<f32>(b + r4, f16(load<u16>(p)));
        store<f32>(b + 16 + r4, f16(load<u16>(p, 2)));
        for (let k = 0; k < 8; k++) {
          store<u8>(b + 32 + 4 * k + r, <u8>kScale(p + 4, k));
          store<u8>(b + 64 + 4 * k + r, <u8>kMin(p + 4, k));
        }
        if (type === Q4_K) {
          copy16s(b + 96 + ((<usize>r) << 7), p + 16, 8);
        } else {
          copy16s(b + 96 + ((<usize>r) << 5), p + 16, 2);
          copy16s(b + 224 + ((<usize>r) << 7), p + 48, 8);
        }
      } else if (type === Q6_K) {
        const p = row + <usize>j * 210;
        store<f32>(b + r4, f16(load<u16>(p, 208)));
        copy16s(b + 16 + r16, p + 192, 1);
        expandQ6(p, b + 80 + ((<usize>r) << 8));
      }
    }
  }
}

/**
 * Compile-time type tags: the hot kernels are generic over T, one integer type per packed weight
 * type (kind<T>() below), so the compiler resolves their per-type branches and emits one
 * specialized function per type.
 */
// @inline
function kind<T>(): i32 {
  return sizeof<T>() === 1
    ? isSigned<T>()
      ? Q8_0
      : Q4_0
    : sizeof<T>() === 2
      ? isSigned<T>()
        ? Q4_1
        : Q5_0
      : sizeof<T>() === 4
        ? isSigned<T>()
          ? Q5_1
          : Q4_K
        : isSigned<T>()
          ? Q5_K
          : Q6_K;
}

/**
 * Weight vector k (0..3) of block j of row r of the group at g, as i16x8: the block's elements
 * 0, 2, …, 14 (k = 0), 1, 3, …, 15 (k = 1), 16, 18, …, 30 (k = 2), 17, 19, …, 31 (k = 3); the
 * activations are stored in the same order (quantizeX). Even/odd splitting widens bytes with 16-bit
 * shifts and masks instead of shuffles. Values: q (Q8_0: signed; Q4_0, Q5_0: unsigned, the offset
 * 8 or 16 is taken off the block's integer sum, see qOffset), q for the affine types (0..31), and
 * sc·(q − 32) for Q6_K (sc: the 16-element sub-block's scale; |sc·(q − 32)| ≤ 4096).
 * For the K-quants j = 8·s + sub: s the super-block, sub (0..7) the 32-element sub-block.
 */
// @inline
function wVec<T>(g: usize, s: i32, sub: i32, r: i32, k: i32): v128 {
  const m4 = i16x8.splat(15);
  const hk = (<usize>(k >> 1)) << 4; // byte offset of the block half
  const odd = k & 1;
  if (kind<T>() === Q8_0) {
    const b = v128.load(g + <usize>s * 144 + 16 + ((<usize>r) << 5) + hk);
    return odd === 0 ? i16x8.shr_s(i16x8.shl(b, 8), 8) : i16x8.shr_s(b, 8);
  } else if (kind<T>() === Q5_0 || kind<T>() === Q5_1) {
    // 32 bytes, q (0..31) of element l at byte l (expanded by pack).
    const qoff: usize = kind<T>() === Q5_0 ? 16 : 32;
    const b = v128.load(g + <usize>s * groupStride(kind<T>()) + qoff + ((<usize>r) << 5) + hk);
    return odd === 0 ? v128.and(b, i16x8.splat(255)) : i16x8.shr_u(b, 8);
  } else if (kind<T>() === Q4_0 || kind<T>() === Q4_1) {
    // 16 bytes of nibbles: element l low, l + 16 high.
    const qoff: usize = kind<T>() === Q4_0 ? 16 : 32;
    const b = v128.load(g + <usize>s * groupStride(kind<T>()) + qoff + ((<usize>r) << 4));
    return k === 0
      ? v128.and(b, m4)
      : k === 1
        ? v128.and(i16x8.shr_u(b, 8), m4)
        : k === 2
          ? v128.and(i16x8.shr_u(b, 4), m4)
          : i16x8.shr_u(b, 12);
  } else if (kind<T>() === Q4_K || kind<T>() === Q5_K) {
    const base = g + <usize>s * groupStride(kind<T>());
    const q = v128.load(
      base + (kind<T>() === Q4_K ? 96 : 224) + ((<usize>r) << 7) + ((<usize>(sub >> 1)) << 5) + hk,
    );
    let lane: v128;
    if ((sub & 1) === 0) lane = odd === 0 ? v128.and(q, m4) : v128.and(i16x8.shr_u(q, 8), m4);
    else lane = odd === 0 ? v128.and(i16x8.shr_u(q, 4), m4) : i16x8.shr_u(q, 12);
    if (kind<T>() === Q4_K) return lane;
    const h = v128.load(base + 96 + ((<usize>r) << 5) + hk);
    return v128.or(lane, v128.and(i16x8.shl(i16x8.shr_u(h, sub + 8 * odd), 4), i16x8.splat(16)));
  } else {
    return i16x8.mul(q6Vec(g, s, sub, r, k), i16x8.splat(<i16>q6Scale(g, s, sub, r, k)));
  }
}

/**
 * wVec for the fused (1- and 2-token) path: the same, except Q8_0's vectors are 256·q (the byte
 * moved to the high half of its i16 lane: one shift or one mask instead of two shifts), so the
 * block's dot products are 256·I, exact in i32 (|256·I| ≤ 256·32·127·127 < 2^31); fusedBlock
 * shifts I back down exactly.
 */
// @inline
function wFused<T>(g: usize, s: i32, sub: i32, r: i32, k: i32): v128 {
  if (kind<T>() === Q8_0) {
    const b = v128.load(g + <usize>s * 144 + 16 + ((<usize>r) << 5) + ((<usize>(k >> 1)) << 4));
    return (k & 1) === 0 ? i16x8.shl(b, 8) : v128.and(b, i16x8.splat(-256));
  }
  return wVec<T>(g, s, sub, r, k);
}

/**
 * Q6_K: wVec before the sub-block scale: q − 32, from the bytes pack expanded (sub-block `sub` holds
 * elements 32·sub … 32·sub + 31).
 */
// @inline
function q6Vec(g: usize, s: i32, sub: i32, r: i32, k: i32): v128 {
  const b = v128.load(
    g + <usize>s * 1104 + 80 + ((<usize>r) << 8) + ((<usize>sub) << 5) + ((<usize>(k >> 1)) << 4),
  );
  return (k & 1) === 0 ? i16x8.shr_s(i16x8.shl(b, 8), 8) : i16x8.shr_s(b, 8);
}

/** Q6_K: the signed scale of the 16 elements of wVec k (k < 2: the block's first 16, else its last). */
// @inline
function q6Scale(g: usize, s: i32, sub: i32, r: i32, k: i32): i32 {
  return <i32>(
    load<i8>(
      g + <usize>s * 1104 + 16 + ((<usize>r) << 4) + <usize>(8 * (sub >> 2) + 2 * (sub & 3) + (k >> 1)),
    )
  );
}

/** What the block's integer sum loses to the unsigned storage of Q4_0 (8 · Σxq) and Q5_0 (16 · Σxq). */
// @inline
function qOffset<T>(): i32 {
  return kind<T>() === Q4_0 ? 8 : kind<T>() === Q5_0 ? 16 : 0;
}

/** Four u8 at p (one per row) as f32x4. */
// @inline
function u8x4(p: usize): v128 {
  return f32x4.convert_i32x4_u(i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(p))));
}

/** The 4 rows' f32 scale of block (s, sub): what multiplies the block's integer sum. */
// @inline
function scaleOf<T>(g: usize, s: i32, sub: i32): v128 {
  const base = g + <usize>s * groupStride(kind<T>());
  if (kind<T>() === Q4_K || kind<T>() === Q5_K)
    return f32x4.mul(v128.load(base), u8x4(base + 32 + ((<usize>sub) << 2)));
  return v128.load(base);
}

/** The 4 rows' f32 minimum of block (s, sub) (Q4_1, Q5_1: added; Q4_K, Q5_K: subtracted). */
// @inline
function minOf<T>(g: usize, s: i32, sub: i32): v128 {
  const base = g + <usize>s * groupStride(kind<T>());
  if (kind<T>() === Q4_K || kind<T>() === Q5_K)
    return f32x4.mul(v128.load(base, 16), u8x4(base + 64 + ((<usize>sub) << 2)));
  return v128.load(base, 16);
}

// @inline
function hasMin<T>(): bool {
  return kind<T>() === Q4_1 || kind<T>() === Q5_1 || kind<T>() === Q4_K || kind<T>() === Q5_K;
}

// @inline
function isK<T>(): bool {
  return kind<T>() === Q4_K || kind<T>() === Q5_K || kind<T>() === Q6_K;
}

/** Σ over one block of w·x: four i16x8 weight vectors against four of x, as i32x4 partial sums. */
// @inline
function dot4(w0: v128, w1: v128, w2: v128, w3: v128, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(w0, x0), i32x4.dot_i16x8_s(w1, x1)),
    i32x4.add(i32x4.dot_i16x8_s(w2, x2), i32x4.dot_i16x8_s(w3, x3)),
  );
}

/** Half of the lane reduction of two i32x4 a, b: [a0 + a2, b0 + b2, a1 + a3, b1 + b3]. */
// @inline
function pair(a: v128, b: v128): v128 {
  return i32x4.add(i32x4.shuffle(a, b, 0, 4, 1, 5), i32x4.shuffle(a, b, 2, 6, 3, 7));
}

/** [Σa, Σb, Σc, Σd] from pair(a, b) and pair(c, d): the lane sums of four i32x4 (exact: integers). */
// @inline
function combine(ab: v128, cd: v128): v128 {
  return i32x4.add(i32x4.shuffle(ab, cd, 0, 1, 4, 5), i32x4.shuffle(ab, cd, 2, 3, 6, 7));
}

/**
 * The canonical update of the 4 rows' (row, token) sums with one block, one row per lane:
 * acc + f32(I)·(S·xs) [+ M·xb (Q4_1, Q5_1) | − M·xb (Q4_K, Q5_K)]. I: the exact integer block sums.
 */
// @inline
function update<T>(acc: v128, I: v128, S: v128, M: v128, xs: usize, xb: usize): v128 {
  // xs, xb: addresses of the token's f32 values, splat straight from memory (one load, where a
  // loaded f32 then splat is a load and a shuffle: V8 does not fold the two).
  acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(I), f32x4.mul(S, v128.load32_splat(xs))));
  if (kind<T>() === Q4_1 || kind<T>() === Q5_1) acc = f32x4.add(acc, f32x4.mul(M, v128.load32_splat(xb)));
  else if (kind<T>() === Q4_K || kind<T>() === Q5_K)
    acc = f32x4.sub(acc, f32x4.mul(M, v128.load32_splat(xb)));
  return acc;
}

/** qOffset · Σq of the token's block (the i32 at xi) in every lane: a shift, qOffset being 8 or 16. */
// @inline
function offsetSum<T>(xi: usize): v128 {
  return i32x4.shl(v128.load32_splat(xi), kind<T>() === Q4_0 ? 3 : 4);
}

/** Stores the 4 lanes of acc at o (or the first `valid` of them). */
// @inline
function storeRows(o: usize, acc: v128, valid: i32): void {
  if (valid >= 4) {
    v128.store(o, acc);
  } else {
    store<f32>(o, f32x4.extract_lane(acc, 0));
    if (valid > 1) store<f32>(o, f32x4.extract_lane(acc, 1), 4);
    if (valid > 2) store<f32>(o, f32x4.extract_lane(acc, 2), 8);
  }
}

/** Row r of block (s, sub), weights unpacked on the fly (wFused), against one token's x0…x3 (dot4). */
// @inline
function fusedRow<T>(g: usize, s: i32, sub: i32, r: i32, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  return dot4(
    wFused<T>(g, s, sub, r, 0),
    wFused<T>(g, s, sub, r, 1),
    wFused<T>(g, s, sub, r, 2),
    wFused<T>(g, s, sub, r, 3),
    x0,
    x1,
    x2,
    x3,
  );
}

/**
 * Block (s, sub) of the group's 4 rows against one token's block j (x: its four i16x8 at xp; xs, xb,
 * xi: the token's per-block arrays), weights unpacked on the fly: the updated acc.
 */
// @inline
function fusedBlock<T>(
  sink: usize,
  g: usize,
  s: i32,
  sub: i32,
  j: i32,
  xq: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  acc: v128,
): v128 {
  const xp = xq + ((<usize>j) << 6);
  const x0 = v128.load(xp);
  const x1 = v128.load(xp, 16);
  const x2 = v128.load(xp, 32);
  const x3 = v128.load(xp, 48);
  // The stores to `sink` are scheduling fences: V8 keeps memory operations in program order but
  // places arithmetic as late as it can, so without them it loads the whole block (or the eight
  // unrolled blocks of a super-block) first and spills; a store of a partial result makes the
  // arithmetic happen before the next loads.
  const i0 = fusedRow<T>(g, s, sub, 0, x0, x1, x2, x3);
  const i1 = fusedRow<T>(g, s, sub, 1, x0, x1, x2, x3);
  const ab = pair(i0, i1);
  v128.store(sink, ab);
  const i2 = fusedRow<T>(g, s, sub, 2, x0, x1, x2, x3);
  const i3 = fusedRow<T>(g, s, sub, 3, x0, x1, x2, x3);
  const cd = pair(i2, i3);
  v128.store(sink, cd, 16);
  let I = combine(ab, cd);
  if (kind<T>() === Q8_0) I = i32x4.shr_s(I, 8); // exact: wFused's Q8_0 vectors are 256·q
  const jo = (<usize>j) << 2;
  if (qOffset<T>() !== 0) I = i32x4.sub(I, offsetSum<T>(xi + jo));
  const M = hasMin<T>() ? minOf<T>(g, s, sub) : f32x4.splat(0);
  return update<T>(acc, I, scaleOf<T>(g, s, sub), M, xs + jo, xb + jo);
}

/** One group of 4 rows against one token (nb blocks), the weights unpacked on the fly. */
// @inline
function groupDot<T>(sink: usize, g: usize, nb: i32, xq: usize, xs: usize, xb: usize, xi: usize): v128 {
  let acc = f32x4.splat(0);
  if (isK<T>()) {
    // The eight sub-blocks of a super-block unrolled, so their shifts and offsets are constants.
    for (let s = 0, j = 0; j < nb; s++, j += 8) {
      acc = fusedBlock<T>(sink, g, s, 0, j, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 1, j + 1, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 2, j + 2, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 3, j + 3, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 4, j + 4, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 5, j + 5, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 6, j + 6, xq, xs, xb, xi, acc);
      acc = fusedBlock<T>(sink, g, s, 7, j + 7, xq, xs, xb, xi, acc);
    }
  } else {
    for (let j = 0; j < nb; j++) acc = fusedBlock<T>(sink, g, j, 0, j, xq, xs, xb, xi, acc);
  }
  return acc;
}

/**
 * Two groups (g and g + gb, 8 rows) against one token, block by block: each group's sums are
 * exactly groupDot's (same operations, same order); interleaving them gives the core two
 * independent weight streams and twice the work per activation load. Stores the 4 rows of each
 * at o0 and o1.
 */
// @inline
function groupDot2<T>(
  sink: usize,
  g: usize,
  gb: usize,
  nb: i32,
  xq: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  o0: usize,
  o1: usize,
): void {
  let acc0 = f32x4.splat(0);
  let acc1 = f32x4.splat(0);
  const g1 = g + gb;
  if (isK<T>()) {
    for (let s = 0, j = 0; j < nb; s++, j += 8) {
      acc0 = fusedBlock<T>(sink, g, s, 0, j, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 0, j, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 1, j + 1, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 1, j + 1, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 2, j + 2, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 2, j + 2, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 3, j + 3, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 3, j + 3, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 4, j + 4, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 4, j + 4, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 5, j + 5, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 5, j + 5, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 6, j + 6, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 6, j + 6, xq, xs, xb, xi, acc1);
      acc0 = fusedBlock<T>(sink, g, s, 7, j + 7, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 7, j + 7, xq, xs, xb, xi, acc1);
    }
  } else {
    for (let j = 0; j < nb; j++) {
      acc0 = fusedBlock<T>(sink, g, j, 0, j, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, j, 0, j, xq, xs, xb, xi, acc1);
    }
  }
  v128.store(o0, acc0);
  v128.store(o1, acc1);
}

/** groupDot2 for four groups g + i·gb (i = 0..3), stored at o0 + i·oo. */
// @inline
function groupDot4<T>(
  sink: usize,
  g: usize,
  gb: usize,
  nb: i32,
  xq: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  o0: usize,
  oo: usize,
): void {
  let acc0 = f32x4.splat(0);
  let acc1 = f32x4.splat(0);
  let acc2 = f32x4.splat(0);
  let acc3 = f32x4.splat(0);
  const g1 = g + gb;
  const g2 = g1 + gb;
  const g3 = g2 + gb;
  if (isK<T>()) {
    // As groupDot: the eight sub-blocks unrolled, so their shifts and offsets are constants.
    for (let s = 0, j = 0; j < nb; s++, j += 8) {
      acc0 = fusedBlock<T>(sink, g, s, 0, j, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 0, j, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 0, j, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 0, j, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 1, j + 1, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 1, j + 1, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 1, j + 1, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 1, j + 1, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 2, j + 2, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 2, j + 2, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 2, j + 2, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 2, j + 2, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 3, j + 3, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 3, j + 3, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 3, j + 3, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 3, j + 3, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 4, j + 4, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 4, j + 4, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 4, j + 4, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 4, j + 4, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 5, j + 5, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 5, j + 5, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 5, j + 5, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 5, j + 5, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 6, j + 6, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 6, j + 6, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 6, j + 6, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 6, j + 6, xq, xs, xb, xi, acc3);
      acc0 = fusedBlock<T>(sink, g, s, 7, j + 7, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, s, 7, j + 7, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, s, 7, j + 7, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, s, 7, j + 7, xq, xs, xb, xi, acc3);
    }
  } else {
    for (let j = 0; j < nb; j++) {
      acc0 = fusedBlock<T>(sink, g, j, 0, j, xq, xs, xb, xi, acc0);
      acc1 = fusedBlock<T>(sink, g1, j, 0, j, xq, xs, xb, xi, acc1);
      acc2 = fusedBlock<T>(sink, g2, j, 0, j, xq, xs, xb, xi, acc2);
      acc3 = fusedBlock<T>(sink, g3, j, 0, j, xq, xs, xb, xi, acc3);
    }
  }
  v128.store(o0, acc0);
  v128.store(o0 + oo, acc1);
  v128.store(o0 + 2 * oo, acc2);
  v128.store(o0 + 3 * oo, acc3);
}

/** The 4 × 4 i32 lanes of rows a, b, c, d transposed: vector p (at o + 16·p) = lane p of a, b, c, d. */
// @inline
function storeTransposed(o: usize, a: v128, b: v128, c: v128, d: v128): void {
  const ab0 = i32x4.shuffle(a, b, 0, 4, 1, 5);
  const ab1 = i32x4.shuffle(a, b, 2, 6, 3, 7);
  const cd0 = i32x4.shuffle(c, d, 0, 4, 1, 5);
  const cd1 = i32x4.shuffle(c, d, 2, 6, 3, 7);
  v128.store(o, i32x4.shuffle(ab0, cd0, 0, 1, 4, 5));
  v128.store(o, i32x4.shuffle(ab0, cd0, 2, 3, 6, 7), 16);
  v128.store(o, i32x4.shuffle(ab1, cd1, 0, 1, 4, 5), 32);
  v128.store(o, i32x4.shuffle(ab1, cd1, 2, 3, 6, 7), 48);
}

/**
 * unpackGroup's work for block (s, sub) = j: the 4 rows' weight vectors (wVec, each 4 pairs of
 * i16 matching 4 of the 16 i32 pairs of x's block), transposed so that vector p (0..15) holds pair
 * p of rows 0, 1, 2, 3: one i32x4.dot_i16x8_s of it against pair p of a token's x (splat) adds to
 * each row's sum in its own lane, with no reduction across lanes afterwards.
 */
// @inline
function unpackBlock<T>(g: usize, s: i32, sub: i32, j: i32, ws: usize, ss: usize, sm: usize): void {
  const o = ws + ((<usize>j) << 8);
  for (let k = 0; k < 4; k++) {
    const ok = o + ((<usize>k) << 6);
    storeTransposed(
      ok,
      wVec<T>(g, s, sub, 0, k),
      wVec<T>(g, s, sub, 1, k),
      wVec<T>(g, s, sub, 2, k),
      wVec<T>(g, s, sub, 3, k),
    );
  }
  v128.store(ss + ((<usize>j) << 4), scaleOf<T>(g, s, sub));
  if (hasMin<T>()) v128.store(sm + ((<usize>j) << 4), minOf<T>(g, s, sub));
}

/**
 * Unpacks a group into scratch for reuse by many tokens: per block j, 16 vectors of the 4 rows'
 * weight pairs (256 B at ws + 256·j, see unpackBlock), S at ss + 16·j and M at sm + 16·j.
 */
// @inline
function unpackGroup<T>(g: usize, nb: i32, ws: usize, ss: usize, sm: usize): void {
  if (isK<T>()) {
    for (let s = 0, j = 0; j < nb; s++, j += 8) {
      unpackBlock<T>(g, s, 0, j, ws, ss, sm);
      unpackBlock<T>(g, s, 1, j + 1, ws, ss, sm);
      unpackBlock<T>(g, s, 2, j + 2, ws, ss, sm);
      unpackBlock<T>(g, s, 3, j + 3, ws, ss, sm);
      unpackBlock<T>(g, s, 4, j + 4, ws, ss, sm);
      unpackBlock<T>(g, s, 5, j + 5, ws, ss, sm);
      unpackBlock<T>(g, s, 6, j + 6, ws, ss, sm);
      unpackBlock<T>(g, s, 7, j + 7, ws, ss, sm);
    }
  } else {
    for (let j = 0; j < nb; j++) unpackBlock<T>(g, j, 0, j, ws, ss, sm);
  }
}

/** acc + the pairwise products of w and x summed per i32 lane. */
// @inline
function mac(acc: v128, w: v128, x: v128): v128 {
  return i32x4.add(acc, i32x4.dot_i16x8_s(w, x));
}

/**
 * unpackedDot's and unpackedDot4's update with block j of one token: its exact integer sums I (a
 * row per lane) less the offset, then update<T>: the same arithmetic as groupDot.
 */
// @inline
function unpackedUpdate<T>(
  acc: v128,
  I: v128,
  j: i32,
  ss: usize,
  sm: usize,
  xs: usize,
  xb: usize,
  xi: usize,
): v128 {
  const jo = (<usize>j) << 2;
  if (qOffset<T>() !== 0) I = i32x4.sub(I, offsetSum<T>(xi + jo));
  const M = hasMin<T>() ? v128.load(sm + ((<usize>j) << 4)) : f32x4.splat(0);
  return update<T>(acc, I, v128.load(ss + ((<usize>j) << 4)), M, xs + jo, xb + jo);
}

/**
 * A group unpacked by unpackGroup against one token: per block, 16 dot products of a weight
 * vector with one i32 pair of x splat to every lane, the 16 steps written out (V8 runs a loop over
 * them about 20% slower). The integer sums are exact, so the result is groupDot's.
 */
function unpackedDot<T>(
  ws: usize,
  ss: usize,
  sm: usize,
  nb: i32,
  xq: usize,
  xs: usize,
  xb: usize,
  xi: usize,
): v128 {
  let acc = f32x4.splat(0);
  for (let j = 0; j < nb; j++) {
    const x = xq + ((<usize>j) << 6);
    const w = ws + ((<usize>j) << 8);
    let I = i32x4.dot_i16x8_s(v128.load(w), v128.load32_splat(x));
    I = mac(I, v128.load(w, 16), v128.load32_splat(x, 4));
    I = mac(I, v128.load(w, 32), v128.load32_splat(x, 8));
    I = mac(I, v128.load(w, 48), v128.load32_splat(x, 12));
    I = mac(I, v128.load(w, 64), v128.load32_splat(x, 16));
    I = mac(I, v128.load(w, 80), v128.load32_splat(x, 20));
    I = mac(I, v128.load(w, 96), v128.load32_splat(x, 24));
    I = mac(I, v128.load(w, 112), v128.load32_splat(x, 28));
    I = mac(I, v128.load(w, 128), v128.load32_splat(x, 32));
    I = mac(I, v128.load(w, 144), v128.load32_splat(x, 36));
    I = mac(I, v128.load(w, 160), v128.load32_splat(x, 40));
    I = mac(I, v128.load(w, 176), v128.load32_splat(x, 44));
    I = mac(I, v128.load(w, 192), v128.load32_splat(x, 48));
    I = mac(I, v128.load(w, 208), v128.load32_splat(x, 52));
    I = mac(I, v128.load(w, 224), v128.load32_splat(x, 56));
    I = mac(I, v128.load(w, 240), v128.load32_splat(x, 60));
    acc = unpackedUpdate<T>(acc, I, j, ss, sm, xs, xb, xi);
  }
  return acc;
}

/**
 * unpackedDot for four tokens at once (x rows xqs bytes apart, their scales xss bytes apart): each
 * weight vector is loaded once for the four. Every (row, token) sum is unpackedDot's. Stores the 4
 * rows of token i (0..3) at o + i·ts.
 *
 * After each step one running sum (a0, a1, a2, a3 in turn) is stored to `sink`: a scheduling
 * fence, as in fusedBlock. V8 keeps memory operations in program order but places arithmetic as
 * late as it can, so without fences it loads all 16 weight vectors and 64 splats of a block first
 * and spills them (13.7 GMAC/s on the 15M LM head at 32 tokens, 1 thread, against 17.9 for the
 * former layout, whose four row sums per token needed a reduction across lanes every block). One
 * store per step is enough to keep each step's loads after the previous step's arithmetic; the
 * four stores per step this kernel first had cost more than they fenced (stand-alone, 4 rows × 32
 * tokens × 576 columns: 25.5 GMAC/s with four, 28.3 with one, 24 with none). In the kernel, 1
 * thread, 32 tokens, alternating builds, two runs each: Q8_0 20.6–21.1 → 22.3–22.8 GMAC/s, Q4_K
 * 20.2–20.5 → 21.6–21.7, Q6_K 20.7–21.0 → 22.6, Q4_0 18.6–18.7 → 19.4–19.9; Q8_0 on 2 threads
 * 39.2–40.2 → 42.9. Not inlined (nor unpackedDot): inside matmulPacked's body V8 runs short of
 * registers for it.
 */
function unpackedDot4<T>(
  sink: usize,
  ws: usize,
  ss: usize,
  sm: usize,
  nb: i32,
  xq: usize,
  xqs: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  xss: usize,
  o: usize,
  ts: usize,
  valid: i32,
): void {
  let f0 = f32x4.splat(0);
  let f1 = f32x4.splat(0);
  let f2 = f32x4.splat(0);
  let f3 = f32x4.splat(0);
  for (let j = 0; j < nb; j++) {
    const x0 = xq + ((<usize>j) << 6);
    const x1 = x0 + xqs;
    const x2 = x1 + xqs;
    const x3 = x2 + xqs;
    const w = ws + ((<usize>j) << 8);
    let wv = v128.load(w);
    let a0 = i32x4.dot_i16x8_s(wv, v128.load32_splat(x0));
    let a1 = i32x4.dot_i16x8_s(wv, v128.load32_splat(x1));
    let a2 = i32x4.dot_i16x8_s(wv, v128.load32_splat(x2));
    let a3 = i32x4.dot_i16x8_s(wv, v128.load32_splat(x3));
    v128.store(sink, a0);
    wv = v128.load(w, 16);
    a0 = mac(a0, wv, v128.load32_splat(x0, 4));
    a1 = mac(a1, wv, v128.load32_splat(x1, 4));
    a2 = mac(a2, wv, v128.load32_splat(x2, 4));
    a3 = mac(a3, wv, v128.load32_splat(x3, 4));
    v128.store(sink, a1, 16);
    wv = v128.load(w, 32);
    a0 = mac(a0, wv, v128.load32_splat(x0, 8));
    a1 = mac(a1, wv, v128.load32_splat(x1, 8));
    a2 = mac(a2, wv, v128.load32_splat(x2, 8));
    a3 = mac(a3, wv, v128.load32_splat(x3, 8));
    v128.store(sink, a2, 32);
    wv = v128.load(w, 48);
    a0 = mac(a0, wv, v128.load32_splat(x0, 12));
    a1 = mac(a1, wv, v128.load32_splat(x1, 12));
    a2 = mac(a2, wv, v128.load32_splat(x2, 12));
    a3 = mac(a3, wv, v128.load32_splat(x3, 12));
    v128.store(sink, a3, 48);
    wv = v128.load(w, 64);
    a0 = mac(a0, wv, v128.load32_splat(x0, 16));
    a1 = mac(a1, wv, v128.load32_splat(x1, 16));
    a2 = mac(a2, wv, v128.load32_splat(x2, 16));
    a3 = mac(a3, wv, v128.load32_splat(x3, 16));
    v128.store(sink, a0);
    wv = v128.load(w, 80);
    a0 = mac(a0, wv, v128.load32_splat(x0, 20));
    a1 = mac(a1, wv, v128.load32_splat(x1, 20));
    a2 = mac(a2, wv, v128.load32_splat(x2, 20));
    a3 = mac(a3, wv, v128.load32_splat(x3, 20));
    v128.store(sink, a1, 16);
    wv = v128.load(w, 96);
    a0 = mac(a0, wv, v128.load32_splat(x0, 24));
    a1 = mac(a1, wv, v128.load32_splat(x1, 24));
    a2 = mac(a2, wv, v128.load32_splat(x2, 24));
    a3 = mac(a3, wv, v128.load32_splat(x3, 24));
    v128.store(sink, a2, 32);
    wv = v128.load(w, 112);
    a0 = mac(a0, wv, v128.load32_splat(x0, 28));
    a1 = mac(a1, wv, v128.load32_splat(x1, 28));
    a2 = mac(a2, wv, v128.load32_splat(x2, 28));
    a3 = mac(a3, wv, v128.load32_splat(x3, 28));
    v128.store(sink, a3, 48);
    wv = v128.load(w, 128);
    a0 = mac(a0, wv, v128.load32_splat(x0, 32));
    a1 = mac(a1, wv, v128.load32_splat(x1, 32));
    a2 = mac(a2, wv, v128.load32_splat(x2, 32));
    a3 = mac(a3, wv, v128.load32_splat(x3, 32));
    v128.store(sink, a0);
    wv = v128.load(w, 144);
    a0 = mac(a0, wv, v128.load32_splat(x0, 36));
    a1 = mac(a1, wv, v128.load32_splat(x1, 36));
    a2 = mac(a2, wv, v128.load32_splat(x2, 36));
    a3 = mac(a3, wv, v128.load32_splat(x3, 36));
    v128.store(sink, a1, 16);
    wv = v128.load(w, 160);
    a0 = mac(a0, wv, v128.load32_splat(x0, 40));
    a1 = mac(a1, wv, v128.load32_splat(x1, 40));
    a2 = mac(a2, wv, v128.load32_splat(x2, 40));
    a3 = mac(a3, wv, v128.load32_splat(x3, 40));
    v128.store(sink, a2, 32);
    wv = v128.load(w, 176);
    a0 = mac(a0, wv, v128.load32_splat(x0, 44));
    a1 = mac(a1, wv, v128.load32_splat(x1, 44));
    a2 = mac(a2, wv, v128.load32_splat(x2, 44));
    a3 = mac(a3, wv, v128.load32_splat(x3, 44));
    v128.store(sink, a3, 48);
    wv = v128.load(w, 192);
    a0 = mac(a0, wv, v128.load32_splat(x0, 48));
    a1 = mac(a1, wv, v128.load32_splat(x1, 48));
    a2 = mac(a2, wv, v128.load32_splat(x2, 48));
    a3 = mac(a3, wv, v128.load32_splat(x3, 48));
    v128.store(sink, a0);
    wv = v128.load(w, 208);
    a0 = mac(a0, wv, v128.load32_splat(x0, 52));
    a1 = mac(a1, wv, v128.load32_splat(x1, 52));
    a2 = mac(a2, wv, v128.load32_splat(x2, 52));
    a3 = mac(a3, wv, v128.load32_splat(x3, 52));
    v128.store(sink, a1, 16);
    wv = v128.load(w, 224);
    a0 = mac(a0, wv, v128.load32_splat(x0, 56));
    a1 = mac(a1, wv, v128.load32_splat(x1, 56));
    a2 = mac(a2, wv, v128.load32_splat(x2, 56));
    a3 = mac(a3, wv, v128.load32_splat(x3, 56));
    v128.store(sink, a2, 32);
    wv = v128.load(w, 240);
    a0 = mac(a0, wv, v128.load32_splat(x0, 60));
    a1 = mac(a1, wv, v128.load32_splat(x1, 60));
    a2 = mac(a2, wv, v128.load32_splat(x2, 60));
    a3 = mac(a3, wv, v128.load32_splat(x3, 60));
    v128.store(sink, a3, 48);
    f0 = unpackedUpdate<T>(f0, a0, j, ss, sm, xs, xb, xi);
    f1 = unpackedUpdate<T>(f1, a1, j, ss, sm, xs + xss, xb + xss, xi + xss);
    f2 = unpackedUpdate<T>(f2, a2, j, ss, sm, xs + 2 * xss, xb + 2 * xss, xi + 2 * xss);
    f3 = unpackedUpdate<T>(f3, a3, j, ss, sm, xs + 3 * xss, xb + 3 * xss, xi + 3 * xss);
  }
  storeRows(o, f0, valid);
  storeRows(o + ts, f1, valid);
  storeRows(o + 2 * ts, f2, valid);
  storeRows(o + 3 * ts, f3, valid);
}

// The 8-bit tiled path (relaxed-SIMD build). From 2 tokens on, where the relaxed dot is
// exact for the type (packedRows), a group of 4 rows is unpacked to unsigned bytes: per block of 32,
// 8 vectors, vector p holding elements 4p … 4p + 3 of rows 0, 1, 2, 3 (a row per i32 lane). One
// i32x4.relaxed_dot_i8x16_i7x16_add_s of it against the token's elements 4p … 4p + 3 (i8, splat to
// every lane) adds 16 products to the 4 rows' sums, each row's 4 in its own lane: on x64 with VNNI
// a single vpdpbusd, where the i16 path spends two instructions on 8. The bytes are the weights
// plus a fixed offset that blockSum8 takes off exactly, so every integer block sum I is the i16
// path's, and every result bit for bit what groupDot and the i16 path compute.

/** Imported from the host: 1 where its relaxed dot multiplies u8 × i8 without saturating (x64 VNNI). */
declare const dotU8: i32;

/**
 * Elements 16·h … 16·h + 15 of row r of block (s, sub) as unsigned bytes, in order: q for Q4_0,
 * Q4_1, Q5_0, Q5_1, Q4_K, Q5_K (0..31), q + 128 for Q8_0 (0..255), q for Q6_K (0..63, its q − 32
 * as pack stores it, plus 32). Only Q8_0's reach 128, which some lowerings of the dot would read as
 * negative or saturate (see packedRows).
 */
// @inline
function w8<T>(g: usize, s: i32, sub: i32, r: i32, h: i32): v128 {
  const m4 = i8x16.splat(15);
  const ho = (<usize>h) << 4;
  if (kind<T>() === Q8_0) {
    return v128.xor(v128.load(g + <usize>s * 144 + 16 + ((<usize>r) << 5) + ho), i8x16.splat(-128));
  } else if (kind<T>() === Q5_0 || kind<T>() === Q5_1) {
    const qoff: usize = kind<T>() === Q5_0 ? 16 : 32;
    return v128.load(g + <usize>s * groupStride(kind<T>()) + qoff + ((<usize>r) << 5) + ho);
  } else if (kind<T>() === Q4_0 || kind<T>() === Q4_1) {
    // 16 bytes of nibbles: element l low, l + 16 high.
    const qoff: usize = kind<T>() === Q4_0 ? 16 : 32;
    const b = v128.load(g + <usize>s * groupStride(kind<T>()) + qoff + ((<usize>r) << 4));
    return h === 0 ? v128.and(b, m4) : i8x16.shr_u(b, 4);
  } else if (kind<T>() === Q4_K || kind<T>() === Q5_K) {
    const base = g + <usize>s * groupStride(kind<T>());
    const q = v128.load(
      base + (kind<T>() === Q4_K ? 96 : 224) + ((<usize>r) << 7) + ((<usize>(sub >> 1)) << 5) + ho,
    );
    const lane = (sub & 1) === 0 ? v128.and(q, m4) : i8x16.shr_u(q, 4);
    if (kind<T>() === Q4_K) return lane;
    const hb = v128.load(base + 96 + ((<usize>r) << 5) + ho);
    return v128.or(lane, v128.and(i8x16.shl(i8x16.shr_u(hb, sub), 4), i8x16.splat(16)));
  } else {
    const b = v128.load(g + <usize>s * 1104 + 80 + ((<usize>r) << 8) + ((<usize>sub) << 5) + ho);
    return i8x16.add(b, i8x16.splat(32));
  }
}

/** Q6_K: the 4 rows' signed scales of half h (elements 16·h … 16·h + 15) of block (s, sub), as i32x4. */
// @inline
function q6Scales(g: usize, s: i32, sub: i32, h: i32): v128 {
  let v = i32x4.splat(q6Scale(g, s, sub, 0, h << 1));
  v = i32x4.replace_lane(v, 1, q6Scale(g, s, sub, 1, h << 1));
  v = i32x4.replace_lane(v, 2, q6Scale(g, s, sub, 2, h << 1));
  return i32x4.replace_lane(v, 3, q6Scale(g, s, sub, 3, h << 1));
}

/**
 * unpackGroup's 8-bit work for block (s, sub) = j: 8 vectors at ws + 128·j (vector p: elements
 * 4p … 4p + 3 of the 4 rows), S at ss + 16·j, M (or Q6_K's two halves' scales) at sm + 32·j.
 */
// @inline
function unpackBlock8<T>(g: usize, s: i32, sub: i32, j: i32, ws: usize, ss: usize, sm: usize): void {
  const o = ws + ((<usize>j) << 7);
  storeTransposed(
    o,
    w8<T>(g, s, sub, 0, 0),
    w8<T>(g, s, sub, 1, 0),
    w8<T>(g, s, sub, 2, 0),
    w8<T>(g, s, sub, 3, 0),
  );
  storeTransposed(
    o + 64,
    w8<T>(g, s, sub, 0, 1),
    w8<T>(g, s, sub, 1, 1),
    w8<T>(g, s, sub, 2, 1),
    w8<T>(g, s, sub, 3, 1),
  );
  v128.store(ss + ((<usize>j) << 4), scaleOf<T>(g, s, sub));
  const m = sm + ((<usize>j) << 5);
  if (hasMin<T>()) v128.store(m, minOf<T>(g, s, sub));
  if (kind<T>() === Q6_K) {
    v128.store(m, q6Scales(g, s, sub, 0));
    v128.store(m, q6Scales(g, s, sub, 1), 16);
  }
}

/**
 * unpackGroup for the 8-bit layout (unpackBlock8 per block). A loop over the K-quants' sub-blocks,
 * not inlined: written out like unpackGroup it made a function V8 took seconds to compile.
 */
function unpackGroup8<T>(g: usize, nb: i32, ws: usize, ss: usize, sm: usize): void {
  for (let j = 0; j < nb; j++) {
    if (isK<T>()) unpackBlock8<T>(g, j >> 3, j & 7, j, ws, ss, sm);
    else unpackBlock8<T>(g, j, 0, j, ws, ss, sm);
  }
}

/** acc + the 4 byte products of each lane of x (i8) and w (u8, see w8) summed into that lane. */
// @inline
function dot8(acc: v128, x: v128, w: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return i32x4.relaxed_dot_i8x16_i7x16_add_s(x, w, acc);
  unreachable(); // matmulPacked takes the 8-bit path in the relaxed build only
  return acc;
}

/**
 * Block j's exact integer sums I (a row per lane) from the 8-bit dot's: a, the first half's sums
 * (Q6_K) or the block's (the others, with b = a); b, Q6_K's second half's. Takes off the bytes'
 * offset (Q8_0: 128 · Σq, Q4_0: 8 · Σq, Q5_0: 16 · Σq); Q6_K's halves lose 32 · Σq of their half and
 * take their scales, giving Σ sc · (q − 32) · xq, the i16 path's I.
 */
// @inline
function blockSum8<T>(a: v128, b: v128, j: i32, sm: usize, xi: usize, xl: usize): v128 {
  const jo = (<usize>j) << 2;
  if (kind<T>() === Q8_0) return i32x4.sub(a, i32x4.shl(v128.load32_splat(xi + jo), 7));
  if (kind<T>() === Q6_K) {
    const lo = v128.load32_splat(xl + jo);
    const hi = i32x4.sub(v128.load32_splat(xi + jo), lo);
    const m = sm + ((<usize>j) << 5);
    return i32x4.add(
      i32x4.mul(i32x4.sub(a, i32x4.shl(lo, 5)), v128.load(m)),
      i32x4.mul(i32x4.sub(b, i32x4.shl(hi, 5)), v128.load(m, 16)),
    );
  }
  if (qOffset<T>() !== 0) return i32x4.sub(a, offsetSum<T>(xi + jo));
  return a;
}

/** unpackedUpdate for the 8-bit layout (M at sm + 32·j). */
// @inline
function update8<T>(
  acc: v128,
  a: v128,
  b: v128,
  j: i32,
  ss: usize,
  sm: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  xl: usize,
): v128 {
  const jo = (<usize>j) << 2;
  const I = blockSum8<T>(a, b, j, sm, xi, xl);
  const M = hasMin<T>() ? v128.load(sm + ((<usize>j) << 5)) : f32x4.splat(0);
  return update<T>(acc, I, v128.load(ss + ((<usize>j) << 4)), M, xs + jo, xb + jo);
}

/** A group unpacked to 8 bits against one token: unpackedDot's result. */
function unpackedDot8<T>(
  ws: usize,
  ss: usize,
  sm: usize,
  nb: i32,
  x8: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  xl: usize,
): v128 {
  let acc = f32x4.splat(0);
  for (let j = 0; j < nb; j++) {
    const x = x8 + ((<usize>j) << 5);
    const w = ws + ((<usize>j) << 7);
    let a = dot8(i32x4.splat(0), v128.load32_splat(x), v128.load(w));
    a = dot8(a, v128.load32_splat(x, 4), v128.load(w, 16));
    a = dot8(a, v128.load32_splat(x, 8), v128.load(w, 32));
    a = dot8(a, v128.load32_splat(x, 12), v128.load(w, 48));
    let b = dot8(kind<T>() === Q6_K ? i32x4.splat(0) : a, v128.load32_splat(x, 16), v128.load(w, 64));
    b = dot8(b, v128.load32_splat(x, 20), v128.load(w, 80));
    b = dot8(b, v128.load32_splat(x, 24), v128.load(w, 96));
    b = dot8(b, v128.load32_splat(x, 28), v128.load(w, 112));
    acc = update8<T>(acc, kind<T>() === Q6_K ? a : b, b, j, ss, sm, xs, xb, xi, xl);
  }
  return acc;
}

/**
 * unpackedDot4 on the 8-bit layout: four tokens (x rows x8s bytes apart, their other values xss
 * apart), each weight vector loaded once for the four, one running sum stored to `sink` per step
 * (the scheduling fence of unpackedDot4). Stores the 4 rows of token i (0..3) at o + i·ts.
 */
function unpackedDot8x4<T>(
  sink: usize,
  ws: usize,
  ss: usize,
  sm: usize,
  nb: i32,
  x8: usize,
  x8s: usize,
  xs: usize,
  xb: usize,
  xi: usize,
  xl: usize,
  xss: usize,
  o: usize,
  ts: usize,
  valid: i32,
): void {
  let f0 = f32x4.splat(0);
  let f1 = f32x4.splat(0);
  let f2 = f32x4.splat(0);
  let f3 = f32x4.splat(0);
  const z = i32x4.splat(0);
  for (let j = 0; j < nb; j++) {
    const x0 = x8 + ((<usize>j) << 5);
    const x1 = x0 + x8s;
    const x2 = x1 + x8s;
    const x3 = x2 + x8s;
    const w = ws + ((<usize>j) << 7);
    let wv = v128.load(w);
    let a0 = dot8(z, v128.load32_splat(x0), wv);
    let a1 = dot8(z, v128.load32_splat(x1), wv);
    let a2 = dot8(z, v128.load32_splat(x2), wv);
    let a3 = dot8(z, v128.load32_splat(x3), wv);
    v128.store(sink, a0);
    wv = v128.load(w, 16);
    a0 = dot8(a0, v128.load32_splat(x0, 4), wv);
    a1 = dot8(a1, v128.load32_splat(x1, 4), wv);
    a2 = dot8(a2, v128.load32_splat(x2, 4), wv);
    a3 = dot8(a3, v128.load32_splat(x3, 4), wv);
    v128.store(sink, a1, 16);
    wv = v128.load(w, 32);
    a0 = dot8(a0, v128.load32_splat(x0, 8), wv);
    a1 = dot8(a1, v128.load32_splat(x1, 8), wv);
    a2 = dot8(a2, v128.load32_splat(x2, 8), wv);
    a3 = dot8(a3, v128.load32_splat(x3, 8), wv);
    v128.store(sink, a2, 32);
    wv = v128.load(w, 48);
    a0 = dot8(a0, v128.load32_splat(x0, 12), wv);
    a1 = dot8(a1, v128.load32_splat(x1, 12), wv);
    a2 = dot8(a2, v128.load32_splat(x2, 12), wv);
    a3 = dot8(a3, v128.load32_splat(x3, 12), wv);
    v128.store(sink, a3, 48);
    // Q6_K's second half has its own scale: its sums start again from zero.
    const q6 = kind<T>() === Q6_K;
    wv = v128.load(w, 64);
    let b0 = dot8(q6 ? z : a0, v128.load32_splat(x0, 16), wv);
    let b1 = dot8(q6 ? z : a1, v128.load32_splat(x1, 16), wv);
    let b2 = dot8(q6 ? z : a2, v128.load32_splat(x2, 16), wv);
    let b3 = dot8(q6 ? z : a3, v128.load32_splat(x3, 16), wv);
    v128.store(sink, b0);
    wv = v128.load(w, 80);
    b0 = dot8(b0, v128.load32_splat(x0, 20), wv);
    b1 = dot8(b1, v128.load32_splat(x1, 20), wv);
    b2 = dot8(b2, v128.load32_splat(x2, 20), wv);
    b3 = dot8(b3, v128.load32_splat(x3, 20), wv);
    v128.store(sink, b1, 16);
    wv = v128.load(w, 96);
    b0 = dot8(b0, v128.load32_splat(x0, 24), wv);
    b1 = dot8(b1, v128.load32_splat(x1, 24), wv);
    b2 = dot8(b2, v128.load32_splat(x2, 24), wv);
    b3 = dot8(b3, v128.load32_splat(x3, 24), wv);
    v128.store(sink, b2, 32);
    wv = v128.load(w, 112);
    b0 = dot8(b0, v128.load32_splat(x0, 28), wv);
    b1 = dot8(b1, v128.load32_splat(x1, 28), wv);
    b2 = dot8(b2, v128.load32_splat(x2, 28), wv);
    b3 = dot8(b3, v128.load32_splat(x3, 28), wv);
    v128.store(sink, b3, 48);
    f0 = update8<T>(f0, q6 ? a0 : b0, b0, j, ss, sm, xs, xb, xi, xl);
    f1 = update8<T>(f1, q6 ? a1 : b1, b1, j, ss, sm, xs + xss, xb + xss, xi + xss, xl + xss);
    f2 = update8<T>(f2, q6 ? a2 : b2, b2, j, ss, sm, xs + 2 * xss, xb + 2 * xss, xi + 2 * xss, xl + 2 * xss);
    f3 = update8<T>(f3, q6 ? a3 : b3, b3, j, ss, sm, xs + 3 * xss, xb + 3 * xss, xi + 3 * xss, xl + 3 * xss);
  }
  storeRows(o, f0, valid);
  storeRows(o + ts, f1, valid);
  storeRows(o + 2 * ts, f2, valid);
  storeRows(o + 3 * ts, f3, valid);
}

/** matmulPacked's tiled path on the 8-bit layout (nTokens ≥ unpackMin; the same results). */
function matmulPacked8<T>(
  w: usize,
  rows: i32,
  nb: i32,
  nTokens: i32,
  act: usize,
  out: usize,
  scratch: usize,
  ts: usize,
): void {
  const n = <usize>nTokens * <usize>nb;
  const x8 = actRegion(act, n, X8);
  const xs = actRegion(act, n, XS);
  const xb = actRegion(act, n, XB);
  const xi = actRegion(act, n, XI);
  const xl = actRegion(act, n, XL);
  const x8s = (<usize>nb) << 5;
  const xss = (<usize>nb) << 2;
  const gb = groupBytes(kind<T>(), nb << 5);
  const ws = scratch;
  const ss = ws + ((<usize>nb) << 7);
  const sm = ss + ((<usize>nb) << 4);
  const sink = sm + ((<usize>nb) << 5);
  let g = w;
  for (let r = 0; r < rows; r += 4, g += gb) {
    const valid = rows - r;
    const o = out + ((<usize>r) << 2);
    unpackGroup8<T>(g, nb, ws, ss, sm);
    let t = 0;
    for (; t + 3 < nTokens; t += 4) {
      const tx = <usize>t * xss;
      unpackedDot8x4<T>(
        sink,
        ws,
        ss,
        sm,
        nb,
        x8 + <usize>t * x8s,
        x8s,
        xs + tx,
        xb + tx,
        xi + tx,
        xl + tx,
        xss,
        o + <usize>t * ts,
        ts,
        valid,
      );
    }
    for (; t < nTokens; t++) {
      const tx = <usize>t * xss;
      storeRows(
        o + <usize>t * ts,
        unpackedDot8<T>(ws, ss, sm, nb, x8 + <usize>t * x8s, xs + tx, xb + tx, xi + tx, xl + tx),
        valid,
      );
    }
  }
}

/** x rounded to the nearest f16 value (ties to even), as an f32: llama.cpp stores its Q8_0 scales as f16. */
function roundF16(x: f32): f32 {
  return f16(f16Bits(x));
}

/** The exact sum of the 4 i32 lanes of v. */
// @inline
function laneSum(v: v128): i32 {
  const s = i32x4.add(v, i32x4.shuffle(v, v, 2, 3, 0, 1));
  return i32x4.extract_lane(i32x4.add(s, i32x4.shuffle(s, s, 1, 0, 3, 2)), 0);
}

// The quantized activations (quantizeX) lie in `act` as six regions, one after another, each with
// one entry per (token, block of 32) in token-major order: n = tokens × blocks entries of 64 B
// (XQ: q as i16 in wVec's order), 4 B (XS: scale d), 4 B (XB: d·Σq), 4 B (XI: Σq), 32 B (X8: q as
// i8 in order) and 4 B (XL: Σq of the first 16).
const XQ: i32 = 0;
const XS: i32 = 1;
const XB: i32 = 2;
const XI: i32 = 3;
const X8: i32 = 4;
const XL: i32 = 5;
const ACT_BYTES: usize = 112;

/** Where region `region` of the activations at act begins (n: tokens × blocks). */
// @inline
function actRegion(act: usize, n: usize, region: i32): usize {
  return (
    act +
    n *
      (region === XQ
        ? 0
        : region === XS
          ? 64
          : region === XB
            ? 68
            : region === XI
              ? 72
              : region === X8
                ? 76
                : 108)
  );
}

/**
 * Quantizes nTokens rows of cols floats at x into 8-bit blocks exactly as llama.cpp (x86) quantizes
 * activations for its integer dot products, so that x̂ = d·q is the same vector there and here:
 * - kQuant = 0 (Q8_0 / Q8_1, for the legacy types): per block of 32, id = 127 / max|x|,
 *   q = round(x·id) (ties to even), d = f16(max|x| / 127); d·Σq also rounded to f16 (Q8_1's s).
 * - kQuant = 1 (Q8_K, for the K-quants; cols a multiple of 256): one scale per 256,
 *   id = 127 / max|x|, q = round(x·id), d = 1 / id (f32).
 * Stored per block of 32 in the regions of `act` (see actRegion): q widened to i16 (64 B, in wVec's
 * order: even elements of 0..15, odd ones, even of 16..31, odd ones), d (f32), d·Σq (f32), Σq (i32),
 * q as i8 in order (32 B, for the 8-bit dot) and Σq of the block's first 16 elements (i32).
 */
function quantizeX(x: usize, nTokens: i32, cols: i32, act: usize, kQuant: i32): void {
  const n = (<usize>nTokens * <usize>cols) >> 5;
  const xq = act;
  const xs = actRegion(act, n, XS);
  const xb = actRegion(act, n, XB);
  const xi = actRegion(act, n, XI);
  const x8 = actRegion(act, n, X8);
  const xl = actRegion(act, n, XL);
  const per: usize = kQuant !== 0 ? 8 : 1; // blocks of 32 sharing one scale
  let id: f32 = 0;
  let d: f32 = 0;
  // Written for V8's x64 code: pmax (one maxps; the values are |x|, and a NaN x yields no useful
  // quantization either way) and rounding by adding 1.5·2^23, which leaves round-to-nearest-even of
  // x·id (|x·id| ≤ 127) in the low mantissa bits: the same q as nearest + trunc_sat, in 2 instructions
  // instead of about 10.
  const magic = f32x4.splat(12582912);
  const magicBits = i32x4.splat(0x4b400000);
  for (let b: usize = 0; b < n; b++) {
    const p = x + (b << 7);
    if (b % per === 0) {
      // max|x| over the scale's span (1 or 8 blocks of 32).
      let m = f32x4.splat(0);
      for (let k: usize = 0; k < per << 5; k += 4) m = f32x4.pmax(m, f32x4.abs(v128.load(p + (k << 2))));
      m = f32x4.pmax(m, i32x4.shuffle(m, m, 2, 3, 0, 1));
      m = f32x4.pmax(m, i32x4.shuffle(m, m, 1, 0, 3, 2));
      const amax = f32x4.extract_lane(m, 0);
      id = amax !== 0 ? <f32>127 / amax : 0;
      d = kQuant !== 0 ? (amax !== 0 ? <f32>1 / id : 0) : amax / 127;
    }
    const vid = f32x4.splat(id);
    const q0 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p), vid), magic), magicBits);
    const q1 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 16), vid), magic), magicBits);
    const q2 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 32), vid), magic), magicBits);
    const q3 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 48), vid), magic), magicBits);
    const q4 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 64), vid), magic), magicBits);
    const q5 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 80), vid), magic), magicBits);
    const q6 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 96), vid), magic), magicBits);
    const q7 = i32x4.sub(f32x4.add(f32x4.mul(v128.load(p, 112), vid), magic), magicBits);
    // wVec's order: even elements of 0..15, odd ones, even of 16..31, odd ones (one shufps each,
    // then one packssdw).
    const o = xq + (b << 6);
    v128.store(o, i16x8.narrow_i32x4_s(i32x4.shuffle(q0, q1, 0, 2, 4, 6), i32x4.shuffle(q2, q3, 0, 2, 4, 6)));
    v128.store(
      o,
      i16x8.narrow_i32x4_s(i32x4.shuffle(q0, q1, 1, 3, 5, 7), i32x4.shuffle(q2, q3, 1, 3, 5, 7)),
      16,
    );
    v128.store(
      o,
      i16x8.narrow_i32x4_s(i32x4.shuffle(q4, q5, 0, 2, 4, 6), i32x4.shuffle(q6, q7, 0, 2, 4, 6)),
      32,
    );
    v128.store(
      o,
      i16x8.narrow_i32x4_s(i32x4.shuffle(q4, q5, 1, 3, 5, 7), i32x4.shuffle(q6, q7, 1, 3, 5, 7)),
      48,
    );
    const e = x8 + (b << 5);
    v128.store(e, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q0, q1), i16x8.narrow_i32x4_s(q2, q3)));
    v128.store(e, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q4, q5), i16x8.narrow_i32x4_s(q6, q7)), 16);
    const lo = i32x4.add(i32x4.add(q0, q1), i32x4.add(q2, q3));
    const sumLo = laneSum(lo);
    const sum = sumLo + laneSum(i32x4.add(i32x4.add(q4, q5), i32x4.add(q6, q7)));
    store<i32>(xl + (b << 2), sumLo);
    store<f32>(xs + (b << 2), kQuant !== 0 ? d : roundF16(d));
    store<f32>(xb + (b << 2), kQuant !== 0 ? d * <f32>sum : roundF16(d * <f32>sum));
    store<i32>(xi + (b << 2), sum);
  }
}

/**
 * out[t, r] for one packed type: groups of 4 rows, each against every token; a group is unpacked
 * to scratch first, as 8-bit weights for the relaxed dot from 2 tokens where `d8` (see packedRows),
 * else as i16 from unpackMin tokens (the same arithmetic either way).
 * act: the activations (quantizeX); ts: bytes between two tokens' rows of out (the whole matrix's
 * rows × 4, also when `rows` is a thread's share).
 */
function matmulPacked<T>(
  w: usize,
  rows: i32,
  cols: i32,
  nTokens: i32,
  act: usize,
  out: usize,
  scratch: usize,
  ts: usize,
  d8: bool,
): void {
  const nb = cols >> 5;
  const n = <usize>nTokens * <usize>nb;
  const xq = act;
  const xs = actRegion(act, n, XS);
  const xb = actRegion(act, n, XB);
  const xi = actRegion(act, n, XI);
  // The 8-bit tiles pay from 2 tokens for every type (2048 × 2048, 2 threads, 2 tokens: Q8_0 67 → 81
  // GFLOP/s, Q4_K 55 → 69, Q4_0 54 → 83 against the fused 2-token path); the i16 ones from unpackMin.
  if (ASC_FEATURE_RELAXED_SIMD && d8 && nTokens >= 2) {
    matmulPacked8<T>(w, rows, nb, nTokens, act, out, scratch, ts);
    return;
  }
  const gb = groupBytes(kind<T>(), cols);
  const xqs = (<usize>nb) << 6;
  const xss = (<usize>nb) << 2;
  const ws = scratch;
  const ss = ws + ((<usize>nb) << 8);
  const sm = ss + ((<usize>nb) << 4);
  const sink = sm + ((<usize>nb) << 4);
  let r = 0;
  let g = w;
  if (nTokens < unpackMin<T>() && kind<T>() !== Q5_K) {
    // Groups i, i + q, i + 2q, i + 3q together (then pairs i, i + h, then single groups): four
    // (two) weight streams far apart keep more lines in flight than one sequential stream, which
    // the prefetchers alone serve at about half of DRAM bandwidth. Every group's arithmetic is
    // groupDot's. Q5_K is left out: its heavier unpacking spills when interleaved.
    const q = rows >> 4;
    const qb = <usize>q * gb;
    const qo = (<usize>q) << 4;
    for (let i = 0; i < q; i++, g += gb) {
      const o = out + ((<usize>i) << 4);
      for (let t = 0; t < nTokens; t++) {
        const tq = <usize>t * xqs;
        const tx = <usize>t * xss;
        const ot = o + <usize>t * ts;
        groupDot4<T>(sink, g, qb, nb, xq + tq, xs + tx, xb + tx, xi + tx, ot, qo);
      }
    }
    r = q << 4;
    g = w + <usize>(q << 2) * gb;
    const h = (rows - r) >> 3;
    const hb = <usize>h * gb;
    const ho = (<usize>h) << 4;
    for (let i = 0; i < h; i++, g += gb) {
      const o = out + ((<usize>r) << 2) + ((<usize>i) << 4);
      for (let t = 0; t < nTokens; t++) {
        const tq = <usize>t * xqs;
        const tx = <usize>t * xss;
        const ot = o + <usize>t * ts;
        groupDot2<T>(sink, g, hb, nb, xq + tq, xs + tx, xb + tx, xi + tx, ot, ot + ho);
      }
    }
    g = w + <usize>((r >> 2) + (h << 1)) * gb;
    r += h << 3;
  }
  for (; r < rows; r += 4, g += gb) {
    const valid = rows - r;
    const o = out + ((<usize>r) << 2);
    if (nTokens < unpackMin<T>()) {
      for (let t = 0; t < nTokens; t++) {
        const tq = <usize>t * xqs;
        const tx = <usize>t * xss;
        storeRows(o + <usize>t * ts, groupDot<T>(sink, g, nb, xq + tq, xs + tx, xb + tx, xi + tx), valid);
      }
    } else {
      unpackGroup<T>(g, nb, ws, ss, sm);
      let t = 0;
      for (; t + 3 < nTokens; t += 4) {
        const tx = <usize>t * xss;
        unpackedDot4<T>(
          sink,
          ws,
          ss,
          sm,
          nb,
          xq + <usize>t * xqs,
          xqs,
          xs + tx,
          xb + tx,
          xi + tx,
          xss,
          o + <usize>t * ts,
          ts,
          valid,
        );
      }
      for (; t < nTokens; t++) {
        const tq = <usize>t * xqs;
        const tx = <usize>t * xss;
        storeRows(
          o + <usize>t * ts,
          unpackedDot<T>(ws, ss, sm, nb, xq + tq, xs + tx, xb + tx, xi + tx),
          valid,
        );
      }
    }
  }
}

/**
 * From this many tokens on, a group's weights are unpacked once to scratch and reused (measured:
 * from 2 tokens for the types with costly unpacking, Q5_K and Q6_K, from 3 for the others).
 */
// @inline
function unpackMin<T>(): i32 {
  return kind<T>() === Q6_K || kind<T>() === Q5_K ? 2 : 3;
}

/**
 * out[t, r] = Σ_c W[r, c] · x[t, c] for a packed quantized matrix (see pack), x quantized first.
 * x: nTokens × cols f32; out: nTokens × rows f32. scratch: quantScratchBytes(cols, nTokens) bytes.
 */
export function matmulQuant(
  type: i32,
  w: usize,
  rows: i32,
  cols: i32,
  x: usize,
  nTokens: i32,
  out: usize,
  scratch: usize,
): void {
  const rest = scratch + <usize>nTokens * <usize>(cols >> 5) * ACT_BYTES;
  quantizeActivations(type, x, nTokens, cols, scratch);
  packedRows(type, w, rows, cols, nTokens, scratch, out, rest, (<usize>rows) << 2);
}

/**
 * matmulPacked for `type`. The tiled path uses the relaxed 8-bit dot (see unpackBlock8) for every
 * type whose unpacked weights are below 128 (exact on every lowering), and for Q8_0 (weights + 128,
 * up to 255) only where the dot multiplies u8 × i8 without saturating (dotU8, from the host).
 */
function packedRows(
  type: i32,
  w: usize,
  rows: i32,
  cols: i32,
  nTokens: i32,
  act: usize,
  out: usize,
  rest: usize,
  ts: usize,
): void {
  const d8 = type !== Q8_0 || dotU8 !== 0;
  if (type === Q8_0) matmulPacked<i8>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q4_0) matmulPacked<u8>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q4_1) matmulPacked<i16>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q5_0) matmulPacked<u16>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q5_1) matmulPacked<i32>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q4_K) matmulPacked<u32>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q5_K) matmulPacked<i64>(w, rows, cols, nTokens, act, out, rest, ts, d8);
  else if (type === Q6_K) matmulPacked<u64>(w, rows, cols, nTokens, act, out, rest, ts, d8);
}

// Threads (src/kernels/thread-pool.ts): a matmul is split by groups of 4 rows, thread `part` of
// `parts` taking groups part·G/parts … (part+1)·G/parts − 1. Each row is computed exactly as in
// the one-thread call (same tiles: a split never cuts a group), so results do not depend on the
// thread count.

/** The first row of thread `part`'s share of `rows` rows (a multiple of 4). */
function partStart(rows: i32, part: i32, parts: i32): i32 {
  const groups = (rows + 3) >> 2;
  return ((groups * part) / parts) << 2;
}

/** Quantizes the activations for matmulQuantPart into scratch (the layout matmulQuant uses). */
export function quantizeActivations(type: i32, x: usize, nTokens: i32, cols: i32, scratch: usize): void {
  if (isLowBit(type)) {
    lowBitQuantize(type, x, nTokens, cols, scratch);
    return;
  }
  quantizeX(x, nTokens, cols, scratch, type === Q4_K || type === Q5_K || type === Q6_K ? 1 : 0);
}

/**
 * Thread `part`'s share of matmulQuant, after quantizeActivations wrote x into `scratch`; the
 * thread's own scratch is partScratch + part · partBytes (partBytes ≥ quantPartBytes(cols)).
 */
export function matmulQuantPart(
  type: i32,
  w: usize,
  rows: i32,
  cols: i32,
  nTokens: i32,
  scratch: usize,
  out: usize,
  partScratch: usize,
  partBytes: i32,
  part: i32,
  parts: i32,
): void {
  if (isLowBit(type)) {
    const own = partScratch + <usize>part * <usize>partBytes;
    lowBitMatmulPart(type, w, rows, cols, nTokens, scratch, out, own, part, parts);
    return;
  }
  const r0 = partStart(rows, part, parts);
  const r1 = min(rows, partStart(rows, part + 1, parts));
  if (r0 >= r1) return;
  const g0 = <usize>(r0 >> 2);
  packedRows(
    type,
    w + g0 * groupBytes(type, cols),
    r1 - r0,
    cols,
    nTokens,
    scratch,
    out + ((<usize>r0) << 2),
    partScratch + <usize>part * <usize>partBytes,
    (<usize>rows) << 2,
  );
}

/**
 * Up to three matrices of one type over the same activations (q, k, v; gate, up): thread `part`
 * does its share of each, from one quantization of x (quantizeActivations). rows3 = 0 for two.
 */
export function matmulQuantMulti(
  type: i32,
  cols: i32,
  nTokens: i32,
  scratch: usize,
  partScratch: usize,
  partBytes: i32,
  w1: usize,
  rows1: i32,
  out1: usize,
  w2: usize,
  rows2: i32,
  out2: usize,
  w3: usize,
  rows3: i32,
  out3: usize,
  part: i32,
  parts: i32,
): void {
  matmulQuantPart(type, w1, rows1, cols, nTokens, scratch, out1, partScratch, partBytes, part, parts);
  matmulQuantPart(type, w2, rows2, cols, nTokens, scratch, out2, partScratch, partBytes, part, parts);
  if (rows3 > 0) {
    matmulQuantPart(type, w3, rows3, cols, nTokens, scratch, out3, partScratch, partBytes, part, parts);
  }
}

/** Bytes of one record of matmulQuantList: type, w, rows, cols, nTokens, scratch, out (u32 each; wasm-kernels.ts writes them). */
const LIST_RECORD_BYTES: i32 = 28;

/**
 * matmulQuantPart over a list of matrices, each with its own activations (quantized by
 * quantizeActivations at its record's scratch): `count` records at `list`, this part's share of
 * each. A layer's chosen experts in one pool call instead of one call (and thread hand-off) per
 * expert; each matrix's result is exactly matmulQuantPart's.
 */
export function matmulQuantList(
  list: usize,
  count: i32,
  partScratch: usize,
  partBytes: i32,
  part: i32,
  parts: i32,
): void {
  for (let i = 0; i < count; i++) {
    const r = list + <usize>(i * LIST_RECORD_BYTES);
    matmulQuantPart(
      load<i32>(r),
      <usize>load<u32>(r, 4),
      load<i32>(r, 8),
      load<i32>(r, 12),
      load<i32>(r, 16),
      <usize>load<u32>(r, 20),
      <usize>load<u32>(r, 24),
      partScratch,
      partBytes,
      part,
      parts,
    );
  }
}

/** Scratch bytes of one thread's share of matmulQuant (unpacked weights, scales, sink). */
export function quantPartBytes(cols: i32): usize {
  const nb = <usize>(cols >> 5);
  return max(nb * 288 + 64, lowBitPartBytes(cols));
}

/** Scratch bytes matmulQuant needs. */
export function quantScratchBytes(cols: i32, nTokens: i32): usize {
  const nb = <usize>(cols >> 5);
  return max(<usize>nTokens * nb * ACT_BYTES + nb * 288 + 64, lowBitScratchBytes(cols, nTokens));
}

/** Decodes a packed group (4 rows) into 4 rows of cols f32 at dst, exactly as ggml dequantizes. */
export function dequantizeGroup(type: i32, g: usize, cols: i32, dst: usize): void {
  if (isLowBit(type)) {
    lowBitDequantizeGroup(type, g, cols, dst);
    return;
  }
  if (type === Q8_0) dequantizeGroupT<i8>(g, cols, dst);
  else if (type === Q4_0) dequantizeGroupT<u8>(g, cols, dst);
  else if (type === Q4_1) dequantizeGroupT<i16>(g, cols, dst);
  else if (type === Q5_0) dequantizeGroupT<u16>(g, cols, dst);
  else if (type === Q5_1) dequantizeGroupT<i32>(g, cols, dst);
  else if (type === Q4_K) dequantizeGroupT<u32>(g, cols, dst);
  else if (type === Q5_K) dequantizeGroupT<i64>(g, cols, dst);
  else if (type === Q6_K) dequantizeGroupT<u64>(g, cols, dst);
}

function dequantizeGroupT<T>(g: usize, cols: i32, dst: usize): void {
  const nb = cols >> 5;
  const rs = (<usize>cols) << 2;
  for (let j = 0; j < nb; j++) {
    const s = isK<T>() ? j >> 3 : j;
    const sub = isK<T>() ? j & 7 : 0;
    const S = scaleOf<T>(g, s, sub);
    const M = hasMin<T>() ? minOf<T>(g, s, sub) : f32x4.splat(0);
    const off = i16x8.splat(<i16>qOffset<T>());
    for (let r = 0; r < 4; r++) {
      const y = dst + <usize>r * rs + ((<usize>j) << 7);
      const sv = f32x4.splat(
        r === 0
          ? f32x4.extract_lane(S, 0)
          : r === 1
            ? f32x4.extract_lane(S, 1)
            : r === 2
              ? f32x4.extract_lane(S, 2)
              : f32x4.extract_lane(S, 3),
      );
      const mv = f32x4.splat(
        r === 0
          ? f32x4.extract_lane(M, 0)
          : r === 1
            ? f32x4.extract_lane(M, 1)
            : r === 2
              ? f32x4.extract_lane(M, 2)
              : f32x4.extract_lane(M, 3),
      );
      for (let half = 0; half < 2; half++) {
        let e: v128;
        let o: v128;
        let sh = sv;
        if (kind<T>() === Q6_K) {
          // (d·sc)·(q − 32), as the reference: d·sc is exact, and zeros keep the reference's sign.
          e = q6Vec(g, s, sub, r, 2 * half);
          o = q6Vec(g, s, sub, r, 2 * half + 1);
          sh = f32x4.mul(sv, f32x4.splat(<f32>q6Scale(g, s, sub, r, 2 * half)));
        } else {
          e = i16x8.sub(wVec<T>(g, s, sub, r, 2 * half), off);
          o = i16x8.sub(wVec<T>(g, s, sub, r, 2 * half + 1), off);
        }
        const lo = i16x8.shuffle(e, o, 0, 8, 1, 9, 2, 10, 3, 11); // elements 16·half + 0..7
        const hi = i16x8.shuffle(e, o, 4, 12, 5, 13, 6, 14, 7, 15); // 16·half + 8..15
        const yh = y + ((<usize>half) << 6);
        for (let k = 0; k < 4; k++) {
          const v =
            k === 0
              ? i32x4.extend_low_i16x8_s(lo)
              : k === 1
                ? i32x4.extend_high_i16x8_s(lo)
                : k === 2
                  ? i32x4.extend_low_i16x8_s(hi)
                  : i32x4.extend_high_i16x8_s(hi);
          const q = f32x4.convert_i32x4_s(v);
          let val: v128;
          // The reference's operations: d·q; d·q + m; (d·sc)·q − m (K, d·sc exact); d·(sc·(q − 32)).
          if (kind<T>() === Q4_1 || kind<T>() === Q5_1) val = f32x4.add(f32x4.mul(q, sv), mv);
          else if (kind<T>() === Q4_K || kind<T>() === Q5_K) val = f32x4.sub(f32x4.mul(sv, q), mv);
          else val = f32x4.mul(q, sh);
          v128.store(yh + ((<usize>k) << 4), val);
        }
      }
    }
  }
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

/**
 * c + a·b, the step of the float matmuls: one fused multiply-add (one rounding) in the relaxed-SIMD
 * build, a multiply then an add (two) in the SIMD128 build. The flag is a compile-time constant.
 */
// @inline
function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(c, f32x4.mul(a, b));
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
    a00 = madd(w, v0, a00);
    a01 = madd(w, v1, a01);
    w = v128.load(w1 + i);
    a10 = madd(w, v0, a10);
    a11 = madd(w, v1, a11);
    w = v128.load(w2 + i);
    a20 = madd(w, v0, a20);
    a21 = madd(w, v1, a21);
    w = v128.load(w3 + i);
    a30 = madd(w, v0, a30);
    a31 = madd(w, v1, a31);
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
    a0 = madd(v128.load(w0 + i), v, a0);
    a1 = madd(v128.load(w1 + i), v, a1);
    a2 = madd(v128.load(w2 + i), v, a2);
    a3 = madd(v128.load(w3 + i), v, a3);
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
    a0 = madd(w, v128.load(x0 + i), a0);
    a1 = madd(w, v128.load(x1 + i), a1);
  }
  store<f32>(o, hsum(a0));
  store<f32>(o + ts, hsum(a1));
}

/** Row w0 × token x0; result at o. */
function dot1x1(w0: usize, x0: usize, nb: usize, o: usize): void {
  let a = f32x4.splat(0);
  for (let i: usize = 0; i < nb; i += 16) a = madd(v128.load(w0 + i), v128.load(x0 + i), a);
  store<f32>(o, hsum(a));
}

// ------------------------------------------------------------------ elementwise ops and attention
//
// These work in f32 on arrays in this memory (the forward pass's activations and the KV cache, which
// the JS side allocates here). Each output element depends only on its own row's inputs, through a
// fixed sequence of operations, so they are batch-invariant too.

/**
 * e^x for four lanes (Cephes expf: x = n·ln2 + r, |r| ≤ ln2/2, a degree-7 polynomial for e^r, then
 * 2^n through the exponent bits): relative error below 2e-7 over the clamped range [-87.3, 88];
 * NaN stays NaN. Below the range it returns about 1.2e-38 instead of a subnormal or 0, above it
 * about 1.7e38 instead of more or infinity (no caller here can tell).
 */
// @inline
function exp4(x: v128): v128 {
  // pmin/pmax (one instruction each); a NaN x passes through both.
  x = f32x4.pmin(f32x4.pmax(x, f32x4.splat(-87.33654)), f32x4.splat(88));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(<f32>Math.LOG2E))); // −126 … 127
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.add(r, f32x4.mul(n, f32x4.splat(2.1219444e-4)));
  const r2 = f32x4.mul(r, r);
  let p = f32x4.splat(1.98756915e-4);
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.3981999507e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(8.3334519073e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(4.1665795894e-2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.6666665459e-1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(5.0000001201e-1));
  p = f32x4.add(f32x4.add(f32x4.mul(p, r2), r), f32x4.splat(1));
  // n as an integer without a saturating conversion: the low mantissa bits of n + 1.5·2^23.
  const ni = i32x4.sub(f32x4.add(n, f32x4.splat(12582912)), i32x4.splat(0x4b400000));
  return f32x4.mul(p, i32x4.shl(i32x4.add(ni, i32x4.splat(127)), 23));
}

/** e^x for one float, through exp4 (the same result as its lane would be). */
// @inline
function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/** Σ a[i]·b[i] over n floats: four lanes (lane j sums i ≡ j mod 4 in order), then (0+1)+(2+3), then the tail. */
// @inline
function dotF32(a: usize, b: usize, n: i32): f32 {
  let acc = f32x4.splat(0);
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    const o = (<usize>i) << 2;
    acc = f32x4.add(acc, f32x4.mul(v128.load(a + o), v128.load(b + o)));
  }
  let s = hsum(acc);
  for (let i = n4; i < n; i++) s += load<f32>(a + ((<usize>i) << 2)) * load<f32>(b + ((<usize>i) << 2));
  return s;
}

/** out[t, :] = x[t, :] · (1 / sqrt(mean(x[t, :]²) + eps)) · w, rows of dim floats; out may be x. */
export function rmsnorm(x: usize, w: usize, nRows: i32, dim: i32, eps: f32, out: usize): void {
  const rb = (<usize>dim) << 2;
  const n4 = dim & ~3;
  for (let t = 0; t < nRows; t++) {
    const xr = x + <usize>t * rb;
    const or = out + <usize>t * rb;
    const ss = dotF32(xr, xr, dim);
    const scale = <f32>(1 / Math.sqrt(<f64>ss / <f64>dim + <f64>eps));
    const sv = f32x4.splat(scale);
    for (let i = 0; i < n4; i += 4) {
      const o = (<usize>i) << 2;
      v128.store(or + o, f32x4.mul(f32x4.mul(v128.load(xr + o), sv), v128.load(w + o)));
    }
    for (let i = n4; i < dim; i++) {
      const o = (<usize>i) << 2;
      store<f32>(or + o, load<f32>(xr + o) * scale * load<f32>(w + o));
    }
  }
}

/** sqrt(2/π), GELU's tanh-approximation constant. */
const SQRT_2_OVER_PI: f32 = 0.7978845608;

/**
 * The gate's activation, four lanes: silu(g) = g / (1 + e^−g), or (gelu ≠ 0) tanh-GELU
 * 0.5·g·(1 + tanh(y)) = g / (1 + e^−2y), y = sqrt(2/π)·g·(1 + 0.044715·g²).
 */
// @inline
function gate4(g: v128, gelu: i32): v128 {
  let z = f32x4.neg(g);
  if (gelu !== 0) {
    const y = f32x4.mul(
      f32x4.mul(g, f32x4.splat(SQRT_2_OVER_PI)),
      f32x4.add(f32x4.splat(1), f32x4.mul(f32x4.splat(0.044715), f32x4.mul(g, g))),
    );
    z = f32x4.mul(y, f32x4.splat(-2));
  }
  return f32x4.div(g, f32x4.add(f32x4.splat(1), exp4(z)));
}

/**
 * out[i] = act(gate[i]) · up[i] for i < n, act silu (SwiGLU) or, gelu ≠ 0, tanh-GELU (Gemma's
 * GeGLU; see gate4), the share `part` of `parts` (whole vectors of 4, the tail with the last part);
 * out may be gate or up.
 */
export function gluPart(gate: usize, up: usize, n: i32, out: usize, gelu: i32, part: i32, parts: i32): void {
  const v = n >> 2;
  const i0 = ((v * part) / parts) << 2;
  const i1 = part === parts - 1 ? n : ((v * (part + 1)) / parts) << 2;
  const n4 = i1 & ~3;
  for (let i = i0; i < n4; i += 4) {
    const o = (<usize>i) << 2;
    v128.store(out + o, f32x4.mul(gate4(v128.load(gate + o), gelu), v128.load(up + o)));
  }
  for (let i = max(i0, n4); i < i1; i++) {
    const o = (<usize>i) << 2;
    const g = f32x4.splat(load<f32>(gate + o));
    store<f32>(out + o, f32x4.extract_lane(gate4(g, gelu), 0) * load<f32>(up + o));
  }
}

/**
 * The first index of the largest of x[0 .. n), NaN never winning: greedy decoding's argmax over a
 * row of logits (src/sampling/sampler.ts, greedyOf). −1 when every value is −∞ or NaN, or when the
 * largest is +∞ (the sampler maps +∞ to the largest finite float first, which can make it tie with
 * an earlier value): the caller decides those cases. Two passes, four lanes each: the maximum (a
 * lane takes v only where v > its value, which a NaN never is), then its first index.
 */
export function argmaxF32(x: usize, n: i32): i32 {
  const n16 = n & ~15;
  let m0 = f32x4.splat(-Infinity);
  let m1 = m0;
  let m2 = m0;
  let m3 = m0;
  for (let i = 0; i < n16; i += 16) {
    const p = x + ((<usize>i) << 2);
    const a = v128.load(p);
    const b = v128.load(p, 16);
    const c = v128.load(p, 32);
    const d = v128.load(p, 48);
    m0 = v128.bitselect(a, m0, f32x4.gt(a, m0));
    m1 = v128.bitselect(b, m1, f32x4.gt(b, m1));
    m2 = v128.bitselect(c, m2, f32x4.gt(c, m2));
    m3 = v128.bitselect(d, m3, f32x4.gt(d, m3));
  }
  m0 = v128.bitselect(m1, m0, f32x4.gt(m1, m0));
  m2 = v128.bitselect(m3, m2, f32x4.gt(m3, m2));
  m0 = v128.bitselect(m2, m0, f32x4.gt(m2, m0));
  let best = f32x4.extract_lane(m0, 0);
  const l1 = f32x4.extract_lane(m0, 1);
  const l2 = f32x4.extract_lane(m0, 2);
  const l3 = f32x4.extract_lane(m0, 3);
  if (l1 > best) best = l1;
  if (l2 > best) best = l2;
  if (l3 > best) best = l3;
  for (let i = n16; i < n; i++) {
    const v = load<f32>(x + ((<usize>i) << 2));
    if (v > best) best = v;
  }
  if (!(best > -Infinity) || best === Infinity) return -1;
  const bv = f32x4.splat(best);
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    if (v128.any_true(f32x4.eq(v128.load(x + ((<usize>i) << 2)), bv))) {
      for (let j = i; ; j++) if (load<f32>(x + ((<usize>j) << 2)) === best) return j;
    }
  }
  for (let i = n4; i < n; i++) if (load<f32>(x + ((<usize>i) << 2)) === best) return i;
  return -1;
}

/**
 * Sampling's working copy of a row of logits: dst[i] = src[i], with NaN → −∞ (never drawn) and +∞ →
 * the largest finite float (src/sampling/sampler.ts, clean). dst may be src.
 */
export function cleanCopyF32(src: usize, dst: usize, n: i32): void {
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    const o = (<usize>i) << 2;
    v128.store(dst + o, clean4(v128.load(src + o)));
  }
  for (let i = n4; i < n; i++) {
    const o = (<usize>i) << 2;
    store<f32>(dst + o, f32x4.extract_lane(clean4(f32x4.splat(load<f32>(src + o))), 0));
  }
}

/** NaN lanes → −∞, +∞ → the largest finite float (min keeps a NaN lane NaN; the select turns it into −∞). */
// @inline
function clean4(v: v128): v128 {
  return v128.bitselect(f32x4.splat(-Infinity), f32x4.min(v, f32x4.splat(f32.MAX_VALUE)), f32x4.ne(v, v));
}

/**
 * Sampling's softmax over the whole vocabulary, in place and unnormalised: x[i] = e^((x[i] − m)·invT)
 * where m is the largest x[i], so the largest becomes exactly 1 and a banned token (−∞) exactly 0.
 * Returns the sum in f64 (two f64 lanes per f32 pair, then the tail in order), or 0 with x untouched
 * when every x[i] is −∞. x holds no NaN (cleanCopyF32's output).
 */
export function softmaxF32(x: usize, n: i32, invT: f32): f64 {
  const n4 = n & ~3;
  let m4 = f32x4.splat(-Infinity);
  for (let i = 0; i < n4; i += 4) m4 = f32x4.max(m4, v128.load(x + ((<usize>i) << 2)));
  let m = max(
    max(f32x4.extract_lane(m4, 0), f32x4.extract_lane(m4, 1)),
    max(f32x4.extract_lane(m4, 2), f32x4.extract_lane(m4, 3)),
  );
  for (let i = n4; i < n; i++) m = max(m, load<f32>(x + ((<usize>i) << 2)));
  if (m === -Infinity) return 0;
  const mv = f32x4.splat(m);
  const sv = f32x4.splat(invT);
  const ninf = f32x4.splat(-Infinity);
  let lo = f64x2.splat(0);
  let hi = f64x2.splat(0);
  for (let i = 0; i < n4; i += 4) {
    const p = x + ((<usize>i) << 2);
    const v = v128.load(p);
    const e = v128.and(exp4(f32x4.mul(f32x4.sub(v, mv), sv)), f32x4.ne(v, ninf));
    v128.store(p, e);
    lo = f64x2.add(lo, f64x2.promote_low_f32x4(e));
    hi = f64x2.add(hi, f64x2.promote_low_f32x4(i32x4.shuffle(e, e, 2, 3, 0, 1)));
  }
  const t = f64x2.add(lo, hi);
  let sum = f64x2.extract_lane(t, 0) + f64x2.extract_lane(t, 1);
  for (let i = n4; i < n; i++) {
    const p = x + ((<usize>i) << 2);
    const v = load<f32>(p);
    const e: f32 = v === -Infinity ? 0 : exp1((v - m) * invT);
    store<f32>(p, e);
    sum += <f64>e;
  }
  return sum;
}

/** a[i] += b[i] for i < n. */
export function addInPlace(a: usize, b: usize, n: i32): void {
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    const o = (<usize>i) << 2;
    v128.store(a + o, f32x4.add(v128.load(a + o), v128.load(b + o)));
  }
  for (let i = n4; i < n; i++) {
    const o = (<usize>i) << 2;
    store<f32>(a + o, load<f32>(a + o) + load<f32>(b + o));
  }
}

/**
 * Rotates pairs of x in place: for token t, head h and i < half, the pair (x[i0], x[i1]) with
 * i0, i1 = 2i, 2i + 1 (normal style) or i, i + half (neox style) becomes
 * (x0·c − x1·s, x0·s + x1·c), c and s from the table: cs[(t·half + i)·2 + 0, 1].
 */
export function rope(
  x: usize,
  nTokens: i32,
  nHeads: i32,
  headDim: i32,
  half: i32,
  neox: bool,
  cs: usize,
): void {
  const hb = (<usize>headDim) << 2;
  for (let t = 0; t < nTokens; t++) {
    const ct = cs + ((<usize>t * <usize>half) << 3);
    for (let h = 0; h < nHeads; h++) {
      const base = x + (<usize>t * <usize>nHeads + <usize>h) * hb;
      if (neox) {
        let i = 0;
        for (; i + 4 <= half; i += 4) {
          const p0 = base + ((<usize>i) << 2);
          const p1 = p0 + ((<usize>half) << 2);
          const a = v128.load(ct + ((<usize>i) << 3));
          const b = v128.load(ct + ((<usize>i) << 3), 16);
          const c = i32x4.shuffle(a, b, 0, 2, 4, 6);
          const s = i32x4.shuffle(a, b, 1, 3, 5, 7);
          const x0 = v128.load(p0);
          const x1 = v128.load(p1);
          v128.store(p0, f32x4.sub(f32x4.mul(x0, c), f32x4.mul(x1, s)));
          v128.store(p1, f32x4.add(f32x4.mul(x0, s), f32x4.mul(x1, c)));
        }
        for (; i < half; i++) {
          const p0 = base + ((<usize>i) << 2);
          const p1 = p0 + ((<usize>half) << 2);
          const c = load<f32>(ct + ((<usize>i) << 3));
          const s = load<f32>(ct + ((<usize>i) << 3), 4);
          const x0 = load<f32>(p0);
          const x1 = load<f32>(p1);
          store<f32>(p0, x0 * c - x1 * s);
          store<f32>(p1, x0 * s + x1 * c);
        }
      } else {
        // Two pairs at a time: [x0, x1, x2, x3]·[c0, c0, c1, c1] + [x1, x0, x3, x2]·[−s0, s0, −s1, s1],
        // lane for lane the scalar loop's x0·c − x1·s and x0·s + x1·c (negation and the order of an
        // addition's operands change no bits).
        const sign = f32x4(-1, 1, -1, 1);
        let i = 0;
        for (; i + 2 <= half; i += 2) {
          const p0 = base + ((<usize>i) << 3);
          const x = v128.load(p0);
          const cs = v128.load(ct + ((<usize>i) << 3));
          const c = i32x4.shuffle(cs, cs, 0, 0, 2, 2);
          const sn = f32x4.mul(i32x4.shuffle(cs, cs, 1, 1, 3, 3), sign);
          v128.store(p0, f32x4.add(f32x4.mul(x, c), f32x4.mul(i32x4.shuffle(x, x, 1, 0, 3, 2), sn)));
        }
        for (; i < half; i++) {
          const p0 = base + ((<usize>i) << 3);
          const c = load<f32>(ct + ((<usize>i) << 3));
          const s = load<f32>(ct + ((<usize>i) << 3), 4);
          const x0 = load<f32>(p0);
          const x1 = load<f32>(p0, 4);
          store<f32>(p0, x0 * c - x1 * s);
          store<f32>(p0, x0 * s + x1 * c, 4);
        }
      }
    }
  }
}

/** Copies n bytes (a multiple of 4): 16 at a time, then 4 (cheaper than memory.copy for one head). */
// @inline
function copyRow(dst: usize, src: usize, n: usize): void {
  let i: usize = 0;
  for (; i + 16 <= n; i += 16) v128.store(dst + i, v128.load(src + i));
  for (; i < n; i += 4) store<u32>(dst + i, load<u32>(src + i));
}

/**
 * Writes the K and V rows of a batch's new tokens into their cache slots. seqs: nSeqs records of
 * four i32 (row, count, pos, table), as attentionPart reads them: the sequence's `count` new tokens
 * are batch rows row.. (nKVHeads × headDim floats each at k and v), and position p goes to block
 * table[p / blockSize] (table: the byte address of its block ids), slot p % blockSize; a block is
 * [kvHead][slot][headDim].
 * f16 ≠ 0: the pools hold f16 (storeRowF16).
 */
export function storeKV(
  kPool: usize,
  vPool: usize,
  blockSize: i32,
  nKVHeads: i32,
  headDim: i32,
  k: usize,
  v: usize,
  seqs: usize,
  nSeqs: i32,
  f16: i32,
): void {
  const hb = (<usize>headDim) << 2;
  const eb: usize = f16 !== 0 ? 1 : 2; // log2 of a cached element's bytes
  for (let s = 0; s < nSeqs; s++) {
    const r = seqs + ((<usize>s) << 4);
    const row = load<i32>(r);
    const count = load<i32>(r, 4);
    const pos = load<i32>(r, 8);
    const table = <usize>load<i32>(r, 12);
    for (let i = 0; i < count; i++) {
      const p = pos + i;
      const block = <usize>load<i32>(table + ((<usize>(p / blockSize)) << 2));
      const slot = <usize>(p % blockSize);
      const src = <usize>(row + i) * <usize>nKVHeads * hb;
      for (let h = 0; h < nKVHeads; h++) {
        const dst = (((block * <usize>nKVHeads + <usize>h) * <usize>blockSize + slot) * <usize>headDim) << eb;
        if (f16 !== 0) {
          storeRowF16(kPool + dst, k + src + <usize>h * hb, headDim);
          storeRowF16(vPool + dst, v + src + <usize>h * hb, headDim);
        } else {
          copyRow(kPool + dst, k + src + <usize>h * hb, hb);
          copyRow(vPool + dst, v + src + <usize>h * hb, hb);
        }
      }
    }
  }
}

/**
 * Causal attention over the paged KV cache for a batch of sequences, the share `part` of `parts`
 * (the thread pool runs every part at once; 0 of 1 is the whole batch). seqs: nSeqs records of four
 * i32, (row, count, pos, table): the sequence's `count` new queries are batch rows row.. (nHeads ×
 * headDim floats each at q, results at out likewise), query i (position pos + i) attends to
 * positions 0 .. pos + i, and `table` is the byte address of its block ids. Head h reads KV head
 * h / (nHeads / nKVHeads). scores: `parts` regions of scoresStride bytes, each
 * attentionScratchBytes(longest context, …); part p uses region p. window > 0: a sliding window
 * (query at p sees keys p − window + 1 .. p only, and no block of the table before that is read: a
 * sequence may have given those back). softcap ≠ 0: scores are soft-capped, cap · tanh(s / cap),
 * before the softmax. f16 ≠ 0: the pools hold f16 (headDim a multiple of 8), read a block at a time
 * into f32 exactly (f16Row), so the arithmetic is the f32 pools'.
 *
 * The work items are (sequence, query, unit) in that order, a unit being `unit` consecutive heads
 * of one KV head (unit divides nHeads / nKVHeads): they share its keys and values, read once for
 * all of them, so the whole group is best unless the batch has too few items to keep every part
 * busy (a 1-sequence decode step). Each item costs the keys it sees times its heads, and part p takes the items whose cost prefix starts in [p·total/parts,
 * (p+1)·total/parts), so the parts are balanced whether the batch is one long prefill or many short
 * decodes. Neither the part nor the unit changes anything in the arithmetic: per (query, head),
 * whatever else is in the batch, s_j = (q · k_j) · scale (dotKey's arithmetic), m = max s_j,
 * e_j = exp(s_j − m), out = (Σ_j e_j · v_j, in order of j, four lanes of headDim at a time through
 * madd) · (1 / Σ_j e_j).
 */
export function attentionPart(
  kPool: usize,
  vPool: usize,
  blockSize: i32,
  nKVHeads: i32,
  headDim: i32,
  q: usize,
  nHeads: i32,
  seqs: usize,
  nSeqs: i32,
  out: usize,
  scores: usize,
  scoresStride: usize,
  scale: f32,
  f16: i32,
  window: i32,
  softcap: f32,
  unit: i32,
  part: i32,
  parts: i32,
): void {
  const group = nHeads / nKVHeads;
  const w = window > 0 ? window : i32.MAX_VALUE;
  const hb = (<usize>headDim) << 2;
  const qb = <usize>nHeads * hb;
  const units = nHeads / unit;
  let total: i64 = 0;
  for (let s = 0; s < nSeqs; s++) {
    const r = seqs + ((<usize>s) << 4);
    total += keysSeen(load<i32>(r, 8), load<i32>(r, 4), w) * <i64>nHeads;
  }
  const lo = (total * <i64>part) / <i64>parts;
  const hi = (total * <i64>(part + 1)) / <i64>parts;
  // The part's scratch: the unit's softmax sums, a widened block (f16 pools), each head's scores.
  const sums = scores + <usize>part * scoresStride;
  const fixed = attentionFixedBytes(group, blockSize, headDim, f16);
  const wide = sums + sumsBytes(group);
  const hs = (scoresStride - fixed) / <usize>group;
  const sc = sums + fixed;
  let c: i64 = 0; // cost of the items before the current one
  for (let s = 0; s < nSeqs && c < hi; s++) {
    const r = seqs + ((<usize>s) << 4);
    const row = load<i32>(r);
    const count = load<i32>(r, 4);
    const pos = load<i32>(r, 8);
    const table = <usize>load<i32>(r, 12);
    const seqCost = keysSeen(pos, count, w) * <i64>nHeads;
    if (c + seqCost <= lo) {
      c += seqCost;
      continue;
    }
    for (let i = 0; i < count && c < hi; i++) {
      const nCtx = pos + i + 1;
      const first = max(0, nCtx - w);
      for (let u = 0; u < units; u++, c += <i64>(nCtx - first) * <i64>unit) {
        if (c < lo || c >= hi) continue;
        const o = <usize>(row + i) * qb + <usize>(u * unit) * hb;
        const kvh = (u * unit) / group;
        attendHeads(
          kPool,
          vPool,
          f16,
          blockSize,
          nKVHeads,
          headDim,
          kvh,
          table,
          wide,
          q + o,
          out + o,
          unit,
          nCtx,
          first,
          sc,
          hs,
          sums,
          scale,
          softcap,
        );
      }
    }
  }
}

/** Bytes for `group` softmax sums, rounded up to 16. */
// @inline
function sumsBytes(group: i32): usize {
  return (<usize>group * 4 + 15) & ~15;
}

/** attentionPart's scratch bytes per part before the heads' scores: the sums, then (f16) one block of one KV head as f32. */
function attentionFixedBytes(group: i32, blockSize: i32, headDim: i32, f16: i32): usize {
  const wide = f16 !== 0 ? <usize>blockSize * <usize>headDim * 4 : 0;
  return sumsBytes(group) + wide;
}

/** attentionPart's scoresStride: scratch bytes per part for contexts of up to maxCtx keys. */
export function attentionScratchBytes(
  maxCtx: i32,
  group: i32,
  blockSize: i32,
  headDim: i32,
  f16: i32,
): usize {
  return (
    attentionFixedBytes(group, blockSize, headDim, f16) + <usize>group * ((<usize>maxCtx * 4 + 15) & ~15)
  );
}

/**
 * The address, as f32, of position j's row of KV head kvh (rows j .. end − 1, all in block b of the
 * sequence's `table`) in `pool`: in place, or (f16 pools) widened exactly into `wide` at the row's
 * slot. A block is [kvHead][slot][headDim].
 */
// @inline
function kvRows(
  pool: usize,
  f16: i32,
  table: usize,
  b: i32,
  j: i32,
  end: i32,
  blockSize: i32,
  nKVHeads: i32,
  headDim: i32,
  kvh: i32,
  wide: usize,
): usize {
  const block = <usize>load<i32>(table + ((<usize>b) << 2));
  const row = <usize>(j - b * blockSize);
  const at = ((block * <usize>nKVHeads + <usize>kvh) * <usize>blockSize + row) * <usize>headDim; // elements
  if (f16 === 0) return pool + (at << 2);
  const w = wide + ((row * <usize>headDim) << 2);
  f16Row(pool + (at << 1), w, (end - j) * headDim);
  return w;
}

/**
 * `n` heads sharing one KV head (queries at qp, qp + hb, …, results at op likewise): the query over
 * positions first .. nCtx − 1. Keys and values are read a block at a time, once for all n heads.
 * Head g's scores at sc + g·hs, its softmax sum at sums + 4g.
 */
function attendHeads(
  kPool: usize,
  vPool: usize,
  f16: i32,
  blockSize: i32,
  nKVHeads: i32,
  headDim: i32,
  kvh: i32,
  table: usize,
  wide: usize,
  qp: usize,
  op: usize,
  n: i32,
  nCtx: i32,
  first: i32,
  sc: usize,
  hs: usize,
  sums: usize,
  scale: f32,
  softcap: f32,
): void {
  const hb = (<usize>headDim) << 2;
  const nBlocks = (nCtx + blockSize - 1) / blockSize;
  const b0 = first / blockSize;
  for (let b = b0, j = first; b < nBlocks; b++) {
    const end = min(nCtx, (b + 1) * blockSize);
    const kp = kvRows(kPool, f16, table, b, j, end, blockSize, nKVHeads, headDim, kvh, wide);
    for (let g = 0; g < n; g++) scoreKeys(qp + <usize>g * hb, kp, headDim, sc + <usize>g * hs, j, end, scale);
    j = end;
  }
  for (let g = 0; g < n; g++) {
    const s = sc + <usize>g * hs;
    let mx = maxScore(s, first, nCtx);
    if (softcap !== 0) mx = capScores(s, first, nCtx, softcap, mx);
    store<f32>(sums + ((<usize>g) << 2), expScores(s + ((<usize>first) << 2), nCtx - first, mx));
  }
  memory.fill(op, 0, <usize>n * hb);
  for (let b = b0, j = first; b < nBlocks; b++) {
    const end = min(nCtx, (b + 1) * blockSize);
    const vp = kvRows(vPool, f16, table, b, j, end, blockSize, nKVHeads, headDim, kvh, wide);
    for (let g = 0; g < n; g++) addValues(op + <usize>g * hb, sc + <usize>g * hs, vp, j, end, headDim);
    j = end;
  }
  for (let g = 0; g < n; g++)
    scaleRow(op + <usize>g * hb, <f32>1 / load<f32>(sums + ((<usize>g) << 2)), headDim);
}

/** s_j = (q · k_j) · scale for j .. end − 1, the keys' rows at kp, kp + hb, …: four keys at a time where headDim allows. */
// @inline
function scoreKeys(qp: usize, kp: usize, headDim: i32, s: usize, j: i32, end: i32, scale: f32): void {
  const hb = (<usize>headDim) << 2;
  if ((headDim & 3) === 0) {
    const scale4 = f32x4.splat(scale);
    for (; j + 4 <= end; j += 4, kp += hb << 2)
      v128.store(s + ((<usize>j) << 2), f32x4.mul(dotKeys4(qp, kp, hb), scale4));
  }
  for (; j < end; j++, kp += hb) store<f32>(s + ((<usize>j) << 2), dotKey(qp, kp, headDim) * scale);
}

/** Σ_d q[d]·k[d] for one key: dotF32's order through madd (dotKeys4's lanes, then the tail). */
// @inline
function dotKey(qp: usize, kp: usize, n: i32): f32 {
  let acc = f32x4.splat(0);
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    const o = (<usize>i) << 2;
    acc = madd(v128.load(qp + o), v128.load(kp + o), acc);
  }
  let s = hsum(acc);
  for (let i = n4; i < n; i++) s += load<f32>(qp + ((<usize>i) << 2)) * load<f32>(kp + ((<usize>i) << 2));
  return s;
}

/** The largest of the scores first .. nCtx − 1 (max is exact: any grouping gives it). */
function maxScore(s: usize, first: i32, nCtx: i32): f32 {
  let mx4 = f32x4.splat(-Infinity);
  let j = first;
  for (; j + 4 <= nCtx; j += 4) mx4 = f32x4.max(mx4, v128.load(s + ((<usize>j) << 2)));
  let mx = max(
    max(f32x4.extract_lane(mx4, 0), f32x4.extract_lane(mx4, 1)),
    max(f32x4.extract_lane(mx4, 2), f32x4.extract_lane(mx4, 3)),
  );
  for (; j < nCtx; j++) mx = max(mx, load<f32>(s + ((<usize>j) << 2)));
  return mx;
}

/**
 * op[d] += Σ_j e_j · v_j[d] for j .. end − 1 in order (e_j at s + 4j, the rows at vp, vp + hb, …),
 * 32, 16, 4 or 1 of headDim at a time with the running sums in registers.
 */
function addValues(op: usize, s: usize, vp: usize, j0: i32, end: i32, headDim: i32): void {
  const hb = (<usize>headDim) << 2;
  let d = 0;
  for (; d + 32 <= headDim; d += 32) {
    const o = op + ((<usize>d) << 2);
    let a0 = v128.load(o);
    let a1 = v128.load(o, 16);
    let a2 = v128.load(o, 32);
    let a3 = v128.load(o, 48);
    let a4 = v128.load(o, 64);
    let a5 = v128.load(o, 80);
    let a6 = v128.load(o, 96);
    let a7 = v128.load(o, 112);
    for (let j = j0, p = vp + ((<usize>d) << 2); j < end; j++, p += hb) {
      const e = v128.load32_splat(s + ((<usize>j) << 2));
      a0 = madd(e, v128.load(p), a0);
      a1 = madd(e, v128.load(p, 16), a1);
      a2 = madd(e, v128.load(p, 32), a2);
      a3 = madd(e, v128.load(p, 48), a3);
      a4 = madd(e, v128.load(p, 64), a4);
      a5 = madd(e, v128.load(p, 80), a5);
      a6 = madd(e, v128.load(p, 96), a6);
      a7 = madd(e, v128.load(p, 112), a7);
    }
    v128.store(o, a0);
    v128.store(o, a1, 16);
    v128.store(o, a2, 32);
    v128.store(o, a3, 48);
    v128.store(o, a4, 64);
    v128.store(o, a5, 80);
    v128.store(o, a6, 96);
    v128.store(o, a7, 112);
  }
  for (; d + 16 <= headDim; d += 16) {
    const o = op + ((<usize>d) << 2);
    let a0 = v128.load(o);
    let a1 = v128.load(o, 16);
    let a2 = v128.load(o, 32);
    let a3 = v128.load(o, 48);
    for (let j = j0, p = vp + ((<usize>d) << 2); j < end; j++, p += hb) {
      const e = v128.load32_splat(s + ((<usize>j) << 2));
      a0 = madd(e, v128.load(p), a0);
      a1 = madd(e, v128.load(p, 16), a1);
      a2 = madd(e, v128.load(p, 32), a2);
      a3 = madd(e, v128.load(p, 48), a3);
    }
    v128.store(o, a0);
    v128.store(o, a1, 16);
    v128.store(o, a2, 32);
    v128.store(o, a3, 48);
  }
  for (; d + 4 <= headDim; d += 4) {
    const o = op + ((<usize>d) << 2);
    let a0 = v128.load(o);
    for (let j = j0, p = vp + ((<usize>d) << 2); j < end; j++, p += hb)
      a0 = madd(v128.load32_splat(s + ((<usize>j) << 2)), v128.load(p), a0);
    v128.store(o, a0);
  }
  for (; d < headDim; d++) {
    const o = op + ((<usize>d) << 2);
    let a = load<f32>(o);
    for (let j = j0, p = vp + ((<usize>d) << 2); j < end; j++, p += hb)
      a += load<f32>(s + ((<usize>j) << 2)) * load<f32>(p);
    store<f32>(o, a);
  }
}

/** x[d] *= f over n floats (four at a time, then the tail). */
function scaleRow(x: usize, f: f32, n: i32): void {
  const f4 = f32x4.splat(f);
  let d = 0;
  for (; d + 4 <= n; d += 4)
    v128.store(x + ((<usize>d) << 2), f32x4.mul(v128.load(x + ((<usize>d) << 2)), f4));
  for (; d < n; d++) store<f32>(x + ((<usize>d) << 2), load<f32>(x + ((<usize>d) << 2)) * f);
}

/** Keys the queries at pos .. pos + count − 1 see in all: Σ min(p + 1, window) (the split's cost). */
// @inline
function keysSeen(pos: i32, count: i32, window: i32): i64 {
  const a = <i64>pos + 1; // the first query's context
  const b = <i64>pos + <i64>count; // the last query's
  const w = <i64>window;
  if (b <= w) return ((a + b) * <i64>count) / 2;
  if (a >= w) return w * <i64>count;
  return ((a + w) * (w - a + 1)) / 2 + (b - w) * w;
}

/**
 * Gemma 2's soft-cap of the scaled scores first .. nCtx − 1, cap · tanh(s / cap), in place; returns
 * the capped maximum (tanh is monotonic: the same score stays the largest).
 */
function capScores(scores: usize, first: i32, nCtx: i32, cap: f32, mx: f32): f32 {
  for (let j = first; j < nCtx; j++) {
    const p = scores + ((<usize>j) << 2);
    store<f32>(p, cap * Mathf.tanh(load<f32>(p) / cap));
  }
  return cap * Mathf.tanh(mx / cap);
}

/**
 * Σ_d q[d]·k[d] for the four keys at kp, kp + hb, kp + 2·hb, kp + 3·hb (hb = headDim · 4 bytes,
 * headDim a multiple of 4), as f32x4: lane j sums d ≡ j mod 4 in order (madd), then (0+1)+(2+3),
 * exactly as dotKey does for one key.
 */
// @inline
function dotKeys4(qp: usize, kp: usize, hb: usize): v128 {
  let a0 = f32x4.splat(0);
  let a1 = f32x4.splat(0);
  let a2 = f32x4.splat(0);
  let a3 = f32x4.splat(0);
  for (let d: usize = 0; d < hb; d += 16) {
    const x = v128.load(qp + d);
    const k = kp + d;
    a0 = madd(x, v128.load(k), a0);
    a1 = madd(x, v128.load(k + hb), a1);
    a2 = madd(x, v128.load(k + 2 * hb), a2);
    a3 = madd(x, v128.load(k + 3 * hb), a3);
  }
  // [a0₀ + a0₁, a1₀ + a1₁, a0₂ + a0₃, a1₂ + a1₃] and the same for a2, a3; then the halves added.
  const t0 = f32x4.add(i32x4.shuffle(a0, a1, 0, 4, 2, 6), i32x4.shuffle(a0, a1, 1, 5, 3, 7));
  const t1 = f32x4.add(i32x4.shuffle(a2, a3, 0, 4, 2, 6), i32x4.shuffle(a2, a3, 1, 5, 3, 7));
  return f32x4.add(i32x4.shuffle(t0, t1, 0, 1, 4, 5), i32x4.shuffle(t0, t1, 2, 3, 6, 7));
}

/**
 * e_j = exp(s_j − mx) in place over the nCtx scores, and their sum (lanes, then (0+1)+(2+3), then
 * the tail in order).
 */
// @inline
function expScores(scores: usize, nCtx: i32, mx: f32): f32 {
  const m4 = f32x4.splat(mx);
  const n4 = nCtx & ~3;
  let acc = f32x4.splat(0);
  for (let j = 0; j < n4; j += 4) {
    const sp = scores + ((<usize>j) << 2);
    const e = exp4(f32x4.sub(v128.load(sp), m4));
    v128.store(sp, e);
    acc = f32x4.add(acc, e);
  }
  let sum = hsum(acc);
  for (let j = n4; j < nCtx; j++) {
    const sp = scores + ((<usize>j) << 2);
    const e = exp1(load<f32>(sp) - mx);
    store<f32>(sp, e);
    sum += e;
  }
  return sum;
}

// ------------------------------------------------------------------ float matmul

/** F16: elements 0..3 (half 0) or 4..7 (half 1) of 8 f16 bit patterns as f32, right for normals and zeros. */
// @inline
function f16Fast(h: v128, half: i32): v128 {
  const em = v128.and(h, i16x8.splat(0x7fff));
  const zero = i16x8.eq(em, i16x8.splat(0));
  const hi = v128.or(
    v128.andnot(i16x8.add(i16x8.shr_u(em, 3), i16x8.splat(112 << 7)), zero),
    v128.and(h, i16x8.splat(-0x8000)),
  );
  const lo = i16x8.shl(h, 13);
  return half === 0
    ? i16x8.shuffle(lo, hi, 0, 8, 1, 9, 2, 10, 3, 11)
    : i16x8.shuffle(lo, hi, 4, 12, 5, 13, 6, 14, 7, 15);
}

/** F16: the lanes of 8 f16 bit patterns that f16Fast gets wrong (subnormals, infinities, NaNs). */
// @inline
function f16Special(h: v128): v128 {
  const em = v128.and(h, i16x8.splat(0x7fff));
  const zero = i16x8.eq(em, i16x8.splat(0));
  return v128.andnot(i16x8.lt_s(i16x8.add(em, i16x8.splat(0x0400)), i16x8.splat(0x0800)), zero);
}

/**
 * One row's accumulator after 8 more weights (elements c..c+7 at wp, F16 or BF16) times x0, x1:
 * acc + w[c..c+4]·x0, then + w[c+4..c+8]·x1 — the canonical order of the float dot products.
 */
// @inline
function floatStep8(type: i32, acc: v128, wp: usize, x0: v128, x1: v128): v128 {
  const h = v128.load(wp);
  let v0: v128;
  let v1: v128;
  if (type === BF16) {
    const z = i16x8.splat(0);
    v0 = i16x8.shuffle(z, h, 0, 8, 1, 9, 2, 10, 3, 11);
    v1 = i16x8.shuffle(z, h, 4, 12, 5, 13, 6, 14, 7, 15);
  } else {
    v0 = f16Fast(h, 0);
    v1 = f16Fast(h, 1);
    if (v128.any_true(f16Special(h))) {
      v0 = f16x4(i32x4.extend_low_i16x8_u(h));
      v1 = f16x4(i32x4.extend_high_i16x8_u(h));
    }
  }
  return madd(v1, x1, madd(v0, x0, acc));
}

/** The same for the last 4 weights of a row whose length is 4 mod 8. */
// @inline
function floatStep4(type: i32, acc: v128, wp: usize, x0: v128): v128 {
  const h = i32x4.extend_low_i16x8_u(v128.load64_zero(wp));
  const v = type === BF16 ? i32x4.shl(h, 16) : f16x4(h);
  return madd(v, x0, acc);
}

/**
 * F16 and BF16 against one token, decoding the weights in registers (no scratch pass): rows r0..
 * in groups of 4, then one at a time, the same arithmetic as decoding them first and calling dot4x1.
 */
// @inline
function floatMatvec(
  type: i32,
  w: usize,
  rowBytes: usize,
  rows: i32,
  colsPad: i32,
  x: usize,
  out: usize,
): void {
  const n8 = colsPad & ~7;
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const p0 = w + <usize>r * rowBytes;
    const p1 = p0 + rowBytes;
    const p2 = p1 + rowBytes;
    const p3 = p2 + rowBytes;
    let a0 = f32x4.splat(0);
    let a1 = f32x4.splat(0);
    let a2 = f32x4.splat(0);
    let a3 = f32x4.splat(0);
    for (let c = 0; c < n8; c += 8) {
      const xp = x + ((<usize>c) << 2);
      const x0 = v128.load(xp);
      const x1 = v128.load(xp, 16);
      const o = (<usize>c) << 1;
      if (type === F16) {
        // One test for the 4 rows' 8 weights: the exact decoding only when one of them needs it.
        const h0 = v128.load(p0 + o);
        const h1 = v128.load(p1 + o);
        const h2 = v128.load(p2 + o);
        const h3 = v128.load(p3 + o);
        const special = v128.or(
          v128.or(f16Special(h0), f16Special(h1)),
          v128.or(f16Special(h2), f16Special(h3)),
        );
        if (!v128.any_true(special)) {
          a0 = madd(f16Fast(h0, 1), x1, madd(f16Fast(h0, 0), x0, a0));
          a1 = madd(f16Fast(h1, 1), x1, madd(f16Fast(h1, 0), x0, a1));
          a2 = madd(f16Fast(h2, 1), x1, madd(f16Fast(h2, 0), x0, a2));
          a3 = madd(f16Fast(h3, 1), x1, madd(f16Fast(h3, 0), x0, a3));
        } else {
          a0 = floatStep8(type, a0, p0 + o, x0, x1);
          a1 = floatStep8(type, a1, p1 + o, x0, x1);
          a2 = floatStep8(type, a2, p2 + o, x0, x1);
          a3 = floatStep8(type, a3, p3 + o, x0, x1);
        }
      } else {
        a0 = floatStep8(type, a0, p0 + o, x0, x1);
        a1 = floatStep8(type, a1, p1 + o, x0, x1);
        a2 = floatStep8(type, a2, p2 + o, x0, x1);
        a3 = floatStep8(type, a3, p3 + o, x0, x1);
      }
    }
    if (n8 < colsPad) {
      const x0 = v128.load(x + ((<usize>n8) << 2));
      const o = (<usize>n8) << 1;
      a0 = floatStep4(type, a0, p0 + o, x0);
      a1 = floatStep4(type, a1, p1 + o, x0);
      a2 = floatStep4(type, a2, p2 + o, x0);
      a3 = floatStep4(type, a3, p3 + o, x0);
    }
    const op = out + ((<usize>r) << 2);
    store<f32>(op, hsum(a0));
    store<f32>(op, hsum(a1), 4);
    store<f32>(op, hsum(a2), 8);
    store<f32>(op, hsum(a3), 12);
  }
  for (; r < rows; r++) {
    const p0 = w + <usize>r * rowBytes;
    let a0 = f32x4.splat(0);
    for (let c = 0; c < n8; c += 8) {
      const xp = x + ((<usize>c) << 2);
      a0 = floatStep8(type, a0, p0 + ((<usize>c) << 1), v128.load(xp), v128.load(xp, 16));
    }
    if (n8 < colsPad) a0 = floatStep4(type, a0, p0 + ((<usize>n8) << 1), v128.load(x + ((<usize>n8) << 2)));
    store<f32>(out + ((<usize>r) << 2), hsum(a0));
  }
}

/**
 * out[t, r] = Σ_c W[r, c] · x[t, c] for r < rows, t < nTokens (out is nTokens × rows f32), for the
 * float types. w: rows of rowBytes bytes (zero-padded to colsPad elements). x: nTokens rows of
 * colsPad f32, zero-padded. scratch: room for 4 × colsPad f32 (decoded rows). colsPad is a
 * multiple of 4.
 */
function matmulFloat(
  type: i32,
  w: usize,
  rowBytes: usize,
  rows: i32,
  colsPad: i32,
  x: usize,
  nTokens: i32,
  out: usize,
  scratch: usize,
  ts: usize,
): void {
  if (nTokens === 1 && type === F16) {
    floatMatvec(F16, w, rowBytes, rows, colsPad, x, out);
    return;
  }
  if (nTokens === 1 && type === BF16) {
    floatMatvec(BF16, w, rowBytes, rows, colsPad, x, out);
    return;
  }
  const nb = (<usize>colsPad) << 2; // bytes in one decoded row and in one x row
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
      decodeFloatRow(type, p0, s0, colsPad);
      decodeFloatRow(type, p1, s1, colsPad);
      decodeFloatRow(type, p2, s2, colsPad);
      decodeFloatRow(type, p3, s3, colsPad);
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
      decodeFloatRow(type, p0, s0, colsPad);
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
  matmulFloat(type, w, rowBytes, rows, colsPad, x, nTokens, out, scratch, (<usize>rows) << 2);
}

/** Thread `part`'s share of matmul; its scratch is scratch + part · scratchBytes (4 × colsPad f32). */
export function matmulPart(
  type: i32,
  w: usize,
  rowBytes: usize,
  rows: i32,
  colsPad: i32,
  x: usize,
  nTokens: i32,
  out: usize,
  scratch: usize,
  scratchBytes: i32,
  part: i32,
  parts: i32,
): void {
  const r0 = partStart(rows, part, parts);
  const r1 = min(rows, partStart(rows, part + 1, parts));
  if (r0 >= r1) return;
  matmulFloat(
    type,
    w + <usize>r0 * rowBytes,
    rowBytes,
    r1 - r0,
    colsPad,
    x,
    nTokens,
    out + ((<usize>r0) << 2),
    scratch + <usize>part * <usize>scratchBytes,
    (<usize>rows) << 2,
  );
}

/** Decodes `rows` rows of a float matrix into f32 rows of colsPad at dst (for tests). */
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
    else decodeFloatRow(type, src, y, colsPad);
  }
}
