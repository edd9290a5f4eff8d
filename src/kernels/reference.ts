import { GGMLType } from "../gguf/types.js";
import { dequantizeRow, dotRow, F16_TO_F32, f32ToF16 } from "../quant/index.js";
import type { AttentionOptions, Kernels, PagedKV, RopeParams, WeightMatrix } from "./kernels.js";

/**
 * The reference kernels: plain TypeScript, written for clarity first. They are
 * the oracle the fast kernels are tested against, and the path that runs
 * wherever no faster implementation exists.
 */

let scoreScratch = new Float32Array(0);
function scratchScores(n: number): Float32Array {
  if (scoreScratch.length < n) scoreScratch = new Float32Array(Math.max(n, scoreScratch.length * 2));
  return scoreScratch;
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[ao + i]! * b[bo + i]!;
    s1 += a[ao + i + 1]! * b[bo + i + 1]!;
    s2 += a[ao + i + 2]! * b[bo + i + 2]!;
    s3 += a[ao + i + 3]! * b[bo + i + 3]!;
  }
  for (; i < n; i++) s0 += a[ao + i]! * b[bo + i]!;
  return s0 + s1 + s2 + s3;
}

/**
 * The f16 table, read once: where the module runs through a CommonJS loader (tsx, vitest) an
 * imported binding is a getter, which per element made f16 attention 10× slower.
 */
const F16 = F16_TO_F32;

let rowScratch = new Float32Array(0);
/** The f32 values of the n f16 at pool[o ..] (a row of an f16 cache), in a scratch row (at 0) valid until the next call. */
function widenRow(pool: Uint16Array, o: number, n: number): Float32Array {
  if (rowScratch.length < n) rowScratch = new Float32Array(n);
  for (let i = 0; i < n; i++) rowScratch[i] = F16[pool[o + i]!]!;
  return rowScratch;
}

/** Offset of (block, head, slot) in a layer's K or V pool. */
export function kvOffset(kv: PagedKV, block: number, head: number, slot: number): number {
  return ((block * kv.nKVHeads + head) * kv.blockSize + slot) * kv.headDim;
}

/** sqrt(2/π), GELU's tanh-approximation constant (ggml's SQRT_2_OVER_PI). */
const SQRT_2_OVER_PI = 0.7978845608028654;

/** GELU, tanh approximation (PyTorch's gelu(approximate="tanh"), ggml_gelu). */
export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * x * (1 + 0.044715 * x * x)));
}

export const referenceKernels: Kernels = {
  name: "reference",

  matmul(w: WeightMatrix, x: Float32Array, nTokens: number, out: Float32Array): void {
    // One dot product per (row, token), the same arithmetic whatever nTokens is, so a sequence's
    // results do not depend on what else is in the batch (batch invariance: the engine's parity tests
    // rely on it). F32 rows are read in place; other types use the fused dequantize-and-dot, which in
    // plain JS beats dequantizing a row once and reusing it (the dots dominate either way).
    const { rows, cols, data, rowBytes, type } = w;
    if (type === GGMLType.F32 && data.byteOffset % 4 === 0) {
      const view = new Float32Array(data.buffer, data.byteOffset, rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let t = 0; t < nTokens; t++) out[t * rows + r] = dot(view, r * cols, x, t * cols, cols);
      }
      return;
    }
    for (let r = 0; r < rows; r++) {
      const wo = r * rowBytes;
      for (let t = 0; t < nTokens; t++) out[t * rows + r] = dotRow(type, data, wo, x, t * cols, cols);
    }
  },

  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Float32Array): void {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!(id >= 0 && id < w.rows))
        throw new RangeError(`token id ${id} is outside the vocabulary (0..${w.rows - 1})`);
      dequantizeRow(w.type, w.data, id * w.rowBytes, out, i * w.cols, w.cols);
    }
  },

  rmsnorm(x, weight, nRows, dim, eps, out): void {
    for (let t = 0; t < nRows; t++) {
      const o = t * dim;
      let ss = 0;
      for (let i = 0; i < dim; i++) ss += x[o + i]! * x[o + i]!;
      const scale = 1 / Math.sqrt(ss / dim + eps);
      for (let i = 0; i < dim; i++) out[o + i] = x[o + i]! * scale * weight[i]!;
    }
  },

  rope(x, nTokens, nHeads, headDim, positions, p: RopeParams): void {
    const half = p.dim / 2;
    const neox = p.style === "neox";
    const m = p.attnFactor ?? 1;
    for (let t = 0; t < nTokens; t++) {
      const pos = positions[t]! * p.freqScale;
      for (let i = 0; i < half; i++) {
        let theta = pos * p.freqBase ** ((-2 * i) / p.dim);
        if (p.freqFactors) theta /= p.freqFactors[i]!;
        const c = Math.cos(theta) * m;
        const s = Math.sin(theta) * m;
        for (let h = 0; h < nHeads; h++) {
          const base = (t * nHeads + h) * headDim;
          const i0 = neox ? base + i : base + 2 * i;
          const i1 = neox ? base + i + half : base + 2 * i + 1;
          const x0 = x[i0]!;
          const x1 = x[i1]!;
          x[i0] = x0 * c - x1 * s;
          x[i1] = x0 * s + x1 * c;
        }
      }
    }
  },

  swiglu(gate, up, n, out): void {
    for (let i = 0; i < n; i++) {
      const g = gate[i]!;
      out[i] = (g / (1 + Math.exp(-g))) * up[i]!;
    }
  },

  geglu(gate, up, n, out): void {
    for (let i = 0; i < n; i++) out[i] = geluTanh(gate[i]!) * up[i]!;
  },

  softcap(x, n, cap): void {
    for (let i = 0; i < n; i++) x[i] = cap * Math.tanh(x[i]! / cap);
  },

  scale(x, n, s): void {
    for (let i = 0; i < n; i++) x[i]! *= s;
  },

  addInPlace(a, b, n): void {
    for (let i = 0; i < n; i++) a[i]! += b[i]!;
  },

  addBias(x, bias, nRows): void {
    const w = bias.length;
    for (let t = 0; t < nRows; t++) for (let i = 0; i < w; i++) x[t * w + i]! += bias[i]!;
  },

  storeKV(kv, k, v, seqs): void {
    const { blockSize, nKVHeads, headDim } = kv;
    const kvDim = nKVHeads * headDim;
    for (const s of seqs) {
      for (let i = 0; i < s.count; i++) {
        const pos = s.pos + i;
        const block = s.blockTable[Math.floor(pos / blockSize)];
        if (block === undefined) throw new RangeError(`block table too short for position ${pos}`);
        const slot = pos % blockSize;
        const src = (s.row + i) * kvDim;
        if (kv.type === "f16") {
          // Rounded to the nearest f16 (ties to even).
          for (let h = 0; h < nKVHeads; h++) {
            const dst = kvOffset(kv, block, h, slot);
            for (let d = 0; d < headDim; d++) {
              kv.k[dst + d] = f32ToF16(k[src + h * headDim + d]!);
              kv.v[dst + d] = f32ToF16(v[src + h * headDim + d]!);
            }
          }
          continue;
        }
        for (let h = 0; h < nKVHeads; h++) {
          const dst = kvOffset(kv, block, h, slot);
          kv.k.set(k.subarray(src + h * headDim, src + (h + 1) * headDim), dst);
          kv.v.set(v.subarray(src + h * headDim, src + (h + 1) * headDim), dst);
        }
      }
    }
  },

  attention(kv, q, nHeads, seqs, out, opts: AttentionOptions = {}): void {
    const { blockSize, nKVHeads, headDim } = kv;
    const group = nHeads / nKVHeads;
    const scale = opts.scale ?? 1 / Math.sqrt(headDim);
    const cap = opts.softcap;
    const window = opts.window ?? Infinity;
    const qDim = nHeads * headDim;
    for (const s of seqs) {
      const scores = scratchScores(s.pos + s.count);
      for (let i = 0; i < s.count; i++) {
        const nCtx = s.pos + i + 1;
        // The first key this query sees: 0, or the start of its sliding window.
        const first = Math.max(0, nCtx - window);
        const row = (s.row + i) * qDim;
        for (let h = 0; h < nHeads; h++) {
          const kvh = Math.floor(h / group);
          const qo = row + h * headDim;
          let max = -Infinity;
          for (let j = first; j < nCtx; j++) {
            const ko = kvOffset(kv, s.blockTable[Math.floor(j / blockSize)]!, kvh, j % blockSize);
            // An f16 cache's key widened to f32 first: the same arithmetic on the stored values.
            let sc =
              (kv.type === "f16"
                ? dot(q, qo, widenRow(kv.k, ko, headDim), 0, headDim)
                : dot(q, qo, kv.k, ko, headDim)) * scale;
            if (cap !== undefined) sc = cap * Math.tanh(sc / cap);
            scores[j] = sc;
            if (sc > max) max = sc;
          }
          let sum = 0;
          for (let j = first; j < nCtx; j++) {
            const e = Math.exp(scores[j]! - max);
            scores[j] = e;
            sum += e;
          }
          out.fill(0, qo, qo + headDim);
          for (let j = first; j < nCtx; j++) {
            const w = scores[j]! / sum;
            const vo = kvOffset(kv, s.blockTable[Math.floor(j / blockSize)]!, kvh, j % blockSize);
            if (kv.type === "f16") {
              for (let d = 0; d < headDim; d++) out[qo + d]! += w * F16[kv.v[vo + d]!]!;
            } else {
              for (let d = 0; d < headDim; d++) out[qo + d]! += w * kv.v[vo + d]!;
            }
          }
        }
      }
    }
  },
};
