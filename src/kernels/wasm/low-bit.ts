// AssemblyScript (see kernels.ts): matmul for the low-bit weight types Q2_K, Q3_K, IQ4_NL and
// IQ4_XS, reached through small hooks in kernels.ts' packed-type exports (supports, groupBytes,
// pack, quantizeActivations, matmulQuantPart, dequantizeGroup and the scratch sizes).
//
// Simple by design: one row at a time, its blocks decoded on the fly to one signed byte per weight
// (SIMD: shifts and masks; the IQ4 levels through one i8x16.swizzle of the 16-entry table) in the
// thread's scratch, then dotted with each token's 8-bit activations as ggml does: exact integer
// sums (i8 × i8 products widened to i32) per sub-block, times the sub-block's integer scale, summed
// per span, and scaled once per span in f32.
//
// Weights are repacked at load in groups of 4 rows (the JS side's unit: rows are split over the
// threads by groups), each row's blocks as ggml's with the f16 factors widened to f32 (exact) and
// Q3_K's / IQ4_XS's packed 6-bit scales unpacked to bytes:
//
//   Q2_K    88 B per 256: D f32 | DMIN f32 | 16 B scales (ggml's: scale | min << 4) | 64 B quants
//   Q3_K   116 B per 256: D f32 | 16 × i8 scale − 32 | 32 B hmask | 64 B quants
//   IQ4_NL  20 B per 32:  D f32 | 16 B codes
//   IQ4_XS 140 B per 256: D f32 | 8 × i8 scale − 32 | 128 B codes
//
// (3-11 % more than the file's bytes.) Activations: Q8_K (one f32 scale per 256, d = 1/id) for Q2_K,
// Q3_K and IQ4_XS, Q8_0 (f16 scale per 32) for IQ4_NL, as llama.cpp's vec_dot_type for each; per
// token: q as i8 in element order, the scale per block of 32 (f32), and Σq per 16 (i32, for Q2_K's
// minimums). Per (row, token) over the spans s in order:
//   Q2_K:   acc = acc + ((D·xd)·f32(Σ_j sc_j·I_j) − (DMIN·xd)·f32(Σ_j m_j·Σq_j))
//   Q3_K, IQ4_XS: acc = acc + (D·xd)·f32(Σ_j sc_j·I_j);   IQ4_NL: acc = acc + (D·xd_b)·f32(I_b)
// with I_j the exact integer Σ q·xq over sub-block j (16 elements; 32 for the IQ4 types). Every term
// depends on that row and token only, so results are batch-invariant and do not depend on threads.

const Q2_K: i32 = 10;
const Q3_K: i32 = 11;
const IQ4_NL: i32 = 20;
const IQ4_XS: i32 = 23;

/** Whether the type is one of this file's. */
export function isLowBit(type: i32): bool {
  return type === Q2_K || type === Q3_K || type === IQ4_NL || type === IQ4_XS;
}

/** Elements per span (the unit with one weight factor and one activation scale). */
// @inline
function span(type: i32): i32 {
  return type === IQ4_NL ? 32 : 256;
}

/** Repacked bytes of one row's span. */
// @inline
function spanBytes(type: i32): usize {
  if (type === Q2_K) return 88;
  if (type === Q3_K) return 116;
  if (type === IQ4_NL) return 20;
  return 140;
}

/** Bytes of one packed row of `cols` elements. */
function rowStride(type: i32, cols: i32): usize {
  return spanBytes(type) * <usize>(cols / span(type));
}

/** Bytes of one group of 4 rows. */
export function lowBitGroupBytes(type: i32, cols: i32): usize {
  return rowStride(type, cols) << 2;
}

/** Exact f32 value of an f16 bit pattern (finite values; kernels.ts' f16 does the same). */
function f16Value(h: u32): f32 {
  const em = h & 0x7fff;
  const v: f32 = em < 0x0400 ? <f32>em * 5.9604644775390625e-8 : reinterpret<f32>((em << 13) + (112 << 23));
  return (h & 0x8000) !== 0 ? -v : v;
}

/**
 * Repacks nRows (1..4) rows of ggml blocks at src (rowBytes apart) into one group at dst (rows
 * nRows..3 zero).
 */
export function lowBitPack(type: i32, src: usize, rowBytes: usize, nRows: i32, cols: i32, dst: usize): void {
  const stride = rowStride(type, cols);
  memory.fill(dst, 0, stride << 2);
  const n = cols / span(type);
  for (let r = 0; r < nRows; r++) {
    const row = src + <usize>r * rowBytes;
    for (let s = 0; s < n; s++) {
      const o = dst + <usize>r * stride + <usize>s * spanBytes(type);
      if (type === Q2_K) {
        const p = row + <usize>s * 84;
        store<f32>(o, f16Value(load<u16>(p, 80)));
        store<f32>(o, f16Value(load<u16>(p, 82)), 4);
        memory.copy(o + 8, p, 80);
      } else if (type === Q3_K) {
        const p = row + <usize>s * 110;
        store<f32>(o, f16Value(load<u16>(p, 108)));
        for (let i = 0; i < 16; i++) {
          const lowBits =
            i < 8 ? <u32>load<u8>(p + 96 + <usize>i) & 15 : <u32>load<u8>(p + 88 + <usize>i) >> 4;
          const highBits = (<u32>load<u8>(p + 104 + <usize>(i & 3)) >> (2 * (i >> 2))) & 3;
          store<i8>(o + 4 + <usize>i, <i8>(<i32>(lowBits | (highBits << 4)) - 32));
        }
        memory.copy(o + 20, p, 96);
      } else if (type === IQ4_NL) {
        const p = row + <usize>s * 18;
        store<f32>(o, f16Value(load<u16>(p)));
        memory.copy(o + 4, p + 2, 16);
      } else {
        const p = row + <usize>s * 136;
        store<f32>(o, f16Value(load<u16>(p)));
        const high = <u32>load<u16>(p, 2);
        for (let ib = 0; ib < 8; ib++) {
          const lowBits = (<u32>load<u8>(p + 4 + <usize>(ib >> 1)) >> (4 * (ib & 1))) & 15;
          const highBits = (high >> (2 * ib)) & 3;
          store<i8>(o + 4 + <usize>ib, <i8>(<i32>(lowBits | (highBits << 4)) - 32));
        }
        memory.copy(o + 12, p + 8, 128);
      }
    }
  }
}

// ------------------------------------------------------------------ activations

/** Scratch bytes of the quantized activations: per token cols i8, cols/32 f32 scales, cols/16 i32 sums. */
export function lowBitScratchBytes(cols: i32, nTokens: i32): usize {
  return <usize>nTokens * ((<usize>cols * 11) >> 3) + 64;
}

/** x rounded to the nearest f16 value (ties to even), as an f32 (kernels.ts' roundF16 does the same). */
function toF16Value(x: f32): f32 {
  const a = abs(x);
  if (a < 6.103515625e-5) return nearest(x * 16777216) * 5.9604644775390625e-8;
  const b = reinterpret<u32>(x);
  return reinterpret<f32>((b + 0x0fff + ((b >> 13) & 1)) & 0xffffe000);
}

/**
 * Quantizes nTokens rows of cols floats at x for `type` into scratch: xq (nTokens × cols i8), then
 * xd (nTokens × cols/32 f32), then xsum (nTokens × cols/16 i32). Q8_K for Q2_K/Q3_K/IQ4_XS: per 256,
 * id = 127/max|x| (f32), q = round(x·id) (ties to even), d = 1/id; Q8_0 for IQ4_NL: per 32, the same
 * q, d = f16(max|x|/127). As llama.cpp (x86) quantizes activations for these types' dot products.
 */
export function lowBitQuantize(type: i32, x: usize, nTokens: i32, cols: i32, scratch: usize): void {
  const n = <usize>nTokens * <usize>cols;
  const xq = scratch;
  const xd = xq + n;
  const xsum = xd + (n >> 3);
  const per: usize = type === IQ4_NL ? 32 : 256;
  for (let s: usize = 0; s < n; s += per) {
    let m = f32x4.splat(0);
    for (let k: usize = 0; k < per; k += 4) m = f32x4.max(m, f32x4.abs(v128.load(x + ((s + k) << 2))));
    m = f32x4.max(m, i32x4.shuffle(m, m, 2, 3, 0, 1));
    m = f32x4.max(m, i32x4.shuffle(m, m, 1, 0, 3, 2));
    const amax = f32x4.extract_lane(m, 0);
    const id: f32 = amax !== 0 ? <f32>127 / amax : 0;
    const d: f32 = type === IQ4_NL ? toF16Value(amax / 127) : amax !== 0 ? <f32>1 / id : 0;
    const vid = f32x4.splat(id);
    for (let b: usize = s; b < s + per; b += 16) {
      const p = x + (b << 2);
      const q0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), vid)));
      const q1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), vid)));
      const q2 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), vid)));
      const q3 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), vid)));
      v128.store(xq + b, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q0, q1), i16x8.narrow_i32x4_s(q2, q3)));
      let t = i32x4.add(i32x4.add(q0, q1), i32x4.add(q2, q3));
      t = i32x4.add(t, i32x4.shuffle(t, t, 2, 3, 0, 1));
      store<i32>(
        xsum + ((b >> 4) << 2),
        i32x4.extract_lane(i32x4.add(t, i32x4.shuffle(t, t, 1, 0, 3, 2)), 0),
      );
    }
    for (let b: usize = s; b < s + per; b += 32) store<f32>(xd + ((b >> 5) << 2), d);
  }
}

// ------------------------------------------------------------------ matmul

/** Scratch bytes one thread needs: a decoded row (cols i8) and a little slack. */
export function lowBitPartBytes(cols: i32): usize {
  return <usize>cols + 64;
}

/** The i8 levels of IQ4_NL / IQ4_XS, indexed by code (ggml's kvalues_iq4nl). */
// @inline
function iq4Table(): v128 {
  return i8x16(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
}

/** Decodes the packed row at p (cols elements) into cols signed bytes at q. */
function decodeRow(type: i32, p: usize, cols: i32, q: usize): void {
  const n = cols / span(type);
  const three = i8x16.splat(3);
  const fifteen = i8x16.splat(15);
  const table = iq4Table();
  for (let s = 0; s < n; s++) {
    const o = p + <usize>s * spanBytes(type);
    if (type === Q2_K || type === Q3_K) {
      // Element 128n + 32j + 16h + l: bits 2j of quant byte 32n + 16h + l; Q3_K's third bit is
      // bit 4n + j of hmask byte 16h + l (clear: subtract 4).
      const qs = o + (type === Q2_K ? 24 : 52);
      const y = q + ((<usize>s) << 8);
      for (let h = 0; h < 2; h++) {
        const hm = type === Q3_K ? v128.load(o + 20 + ((<usize>h) << 4)) : i8x16.splat(0);
        for (let half = 0; half < 2; half++) {
          const v = v128.load(qs + ((<usize>half) << 5) + ((<usize>h) << 4));
          for (let j = 0; j < 4; j++) {
            let w = v128.and(i8x16.shr_u(v, 2 * j), three);
            if (type === Q3_K) {
              const hb = v128.and(i8x16.shr_u(hm, 4 * half + j), i8x16.splat(1));
              w = i8x16.sub(v128.or(w, i8x16.shl(hb, 2)), i8x16.splat(4));
            }
            v128.store(y + ((<usize>half) << 7) + ((<usize>j) << 5) + ((<usize>h) << 4), w);
          }
        }
      }
    } else {
      const blocks = type === IQ4_NL ? 1 : 8;
      const codes = o + (type === IQ4_NL ? 4 : 12);
      const y = q + <usize>s * <usize>span(type);
      for (let ib = 0; ib < blocks; ib++) {
        const v = v128.load(codes + ((<usize>ib) << 4));
        v128.store(y + ((<usize>ib) << 5), i8x16.swizzle(table, v128.and(v, fifteen)));
        v128.store(y + ((<usize>ib) << 5) + 16, i8x16.swizzle(table, i8x16.shr_u(v, 4)));
      }
    }
  }
}

/** Σ w·x over 16 signed bytes each, as four i32 partial sums (exact: |w·x| ≤ 127² fits i16). */
// @inline
function dot16(w: usize, x: usize): v128 {
  const a = v128.load(w);
  const b = v128.load(x);
  return i32x4.add(
    i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_low_i8x16_s(a, b)),
    i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_high_i8x16_s(a, b)),
  );
}

// @inline
function hsum(v: v128): i32 {
  const t = i32x4.add(v, i32x4.shuffle(v, v, 2, 3, 0, 1));
  return i32x4.extract_lane(i32x4.add(t, i32x4.shuffle(t, t, 1, 0, 3, 2)), 0);
}

/** One (row, token): the decoded row q against the token's activations (see the file comment). */
function rowDot(type: i32, p: usize, q: usize, cols: i32, xq: usize, xd: usize, xsum: usize): f32 {
  let acc: f32 = 0;
  const n = cols / span(type);
  for (let s = 0; s < n; s++) {
    const o = p + <usize>s * spanBytes(type);
    const w = q + <usize>s * <usize>span(type);
    const x = xq + <usize>s * <usize>span(type);
    const D = load<f32>(o);
    if (type === IQ4_NL) {
      const I = hsum(i32x4.add(dot16(w, x), dot16(w + 16, x + 16)));
      acc += D * load<f32>(xd + ((<usize>s) << 2)) * <f32>I;
      continue;
    }
    const d = load<f32>(xd + ((<usize>s) << 5)); // the span's Q8_K scale (stored per 32)
    let isum = i32x4.splat(0);
    if (type === IQ4_XS) {
      for (let ib = 0; ib < 8; ib++) {
        const b = (<usize>ib) << 5;
        const I = i32x4.add(dot16(w + b, x + b), dot16(w + b + 16, x + b + 16));
        isum = i32x4.add(isum, i32x4.mul(I, i32x4.splat(<i32>load<i8>(o + 4 + <usize>ib))));
      }
      acc += D * d * <f32>hsum(isum);
      continue;
    }
    for (let j = 0; j < 16; j++) {
      const b = (<usize>j) << 4;
      const sc = type === Q2_K ? <i32>(load<u8>(o + 8 + <usize>j) & 15) : <i32>load<i8>(o + 4 + <usize>j);
      isum = i32x4.add(isum, i32x4.mul(dot16(w + b, x + b), i32x4.splat(sc)));
    }
    if (type === Q2_K) {
      let msum = 0;
      const sums = xsum + ((<usize>s) << 6);
      for (let j = 0; j < 16; j++)
        msum += <i32>(load<u8>(o + 8 + <usize>j) >> 4) * load<i32>(sums + ((<usize>j) << 2));
      acc += D * d * <f32>hsum(isum) - load<f32>(o, 4) * d * <f32>msum;
    } else {
      acc += D * d * <f32>hsum(isum);
    }
  }
  return acc;
}

/**
 * Thread `part`'s share (groups of 4 rows, as kernels.ts splits them) of out[t, r] = Σ_c W[r, c] ·
 * x[t, c], after lowBitQuantize wrote the activations into `scratch`; rowScratch: the thread's
 * lowBitPartBytes(cols) bytes.
 */
export function lowBitMatmulPart(
  type: i32,
  w: usize,
  rows: i32,
  cols: i32,
  nTokens: i32,
  scratch: usize,
  out: usize,
  rowScratch: usize,
  part: i32,
  parts: i32,
): void {
  const groups = (rows + 3) >> 2;
  const r0 = ((groups * part) / parts) << 2;
  const r1 = min(rows, ((groups * (part + 1)) / parts) << 2);
  const n = <usize>nTokens * <usize>cols;
  const xd = scratch + n;
  const xsum = xd + (n >> 3);
  const stride = rowStride(type, cols);
  for (let r = r0; r < r1; r++) {
    const p = w + <usize>r * stride;
    decodeRow(type, p, cols, rowScratch);
    for (let t = 0; t < nTokens; t++) {
      const tc = <usize>t * <usize>cols;
      const v = rowDot(type, p, rowScratch, cols, scratch + tc, xd + (tc >> 3), xsum + (tc >> 2));
      store<f32>(out + ((<usize>t * <usize>rows + <usize>r) << 2), v);
    }
  }
}

/** Decodes a packed group (4 rows) into 4 rows of cols f32 at dst, exactly as ggml dequantizes. */
export function lowBitDequantizeGroup(type: i32, g: usize, cols: i32, dst: usize): void {
  const stride = rowStride(type, cols);
  const n = cols / span(type);
  for (let r = 0; r < 4; r++) {
    const p = g + <usize>r * stride;
    const y = dst + ((<usize>r * <usize>cols) << 2);
    // Decode to bytes at the end of this row's floats, then widen in order (each float written
    // lies at or before the byte it comes from, 4 bytes per byte).
    const qb = y + ((<usize>cols) << 2) - <usize>cols;
    decodeRow(type, p, cols, qb);
    for (let s = 0; s < n; s++) {
      const o = p + <usize>s * spanBytes(type);
      const D = load<f32>(o);
      for (let e = 0; e < span(type); e++) {
        const i = s * span(type) + e;
        const v = <f32>load<i8>(qb + <usize>i);
        let val: f32;
        if (type === Q2_K) {
          const sc = <u32>load<u8>(o + 8 + <usize>(e >> 4));
          val = D * <f32>(sc & 15) * v - load<f32>(o, 4) * <f32>(sc >> 4);
        } else if (type === Q3_K) val = D * <f32>load<i8>(o + 4 + <usize>(e >> 4)) * v;
        else if (type === IQ4_XS) val = D * <f32>load<i8>(o + 4 + <usize>(e >> 5)) * v;
        else val = D * v;
        store<f32>(y + ((<usize>i) << 2), val);
      }
    }
  }
}
