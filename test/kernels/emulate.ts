import { GGMLType, SUPPORTED_WEIGHT_TYPES, TYPE_GEOMETRY } from "../../src/gguf/types.js";
import type { Kernels, WeightMatrix } from "../../src/kernels/kernels.js";
import { referenceKernels } from "../../src/kernels/reference.js";
import { dequantize, f16ToF32, f32ToF16 } from "../../src/quant/index.js";

/**
 * The WebAssembly kernels' error model for quantized weights, emulated in plain TypeScript: the
 * activations are quantized as llama.cpp (x86) quantizes them for its integer dot products, and the
 * result is the exact dot product of the weights with x̂ = d·q, up to f32 rounding.
 */

const f = Math.fround;

/** Round half to even (WebAssembly's f32x4.nearest, x86's _MM_ROUND_NEAREST). */
export function rintEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function f16Round(v: number): number {
  return f16ToF32(f32ToF16(v));
}

/** The quantized (block) types among those Spindle supports: the ones the kernels repack in groups. */
export const PACKED_TYPES: readonly GGMLType[] = SUPPORTED_WEIGHT_TYPES.filter(
  (t) => TYPE_GEOMETRY[t]!.blockSize > 1,
);

export function isKQuant(type: GGMLType): boolean {
  return type === GGMLType.Q4_K || type === GGMLType.Q5_K || type === GGMLType.Q6_K;
}

/**
 * Whether llama.cpp quantizes the activations of this type's dot products to Q8_K (one f32 scale
 * per 256: the K-quants and IQ4_XS) rather than Q8_0/Q8_1 (one f16 scale per 32: the legacy types
 * and IQ4_NL).
 */
export function usesQ8K(type: GGMLType): boolean {
  return isKQuant(type) || type === GGMLType.Q2_K || type === GGMLType.Q3_K || type === GGMLType.IQ4_XS;
}

export interface QuantizedX {
  /** x̂ = d·q per element (exact in double). */
  xhat: Float64Array;
  /** Per block of 32: the scale d the kernels use. */
  xs: Float64Array;
  /** Per block of 32: d·Σq as the kernels use it (rounded to f16 for the legacy types, as Q8_1's s). */
  xb: Float64Array;
  /** Per block of 32: Σq. */
  sum: Int32Array;
}

/**
 * nTokens rows of cols floats quantized as the kernels do for weights of this type: Q8_0/Q8_1
 * (scale per 32, stored as f16) for the legacy types and IQ4_NL, Q8_K (one f32 scale per 256) for the
 * K-quants and IQ4_XS.
 */
export function quantizeActivations(
  x: Float32Array,
  nTokens: number,
  cols: number,
  type: GGMLType,
): QuantizedX {
  const n = nTokens * cols;
  const k = usesQ8K(type);
  const span = k ? 256 : 32;
  const xhat = new Float64Array(n);
  const xs = new Float64Array(n / 32);
  const xb = new Float64Array(n / 32);
  const sum = new Int32Array(n / 32);
  for (let s = 0; s < n; s += span) {
    let amax = 0;
    for (let i = 0; i < span; i++) amax = Math.max(amax, Math.abs(x[s + i]!));
    const id = amax !== 0 ? f(127 / amax) : 0;
    const d = k ? (amax !== 0 ? f(1 / id) : 0) : f(amax / 127);
    for (let b = s; b < s + span; b += 32) {
      let q = 0;
      const scale = k ? d : f16Round(d);
      for (let i = b; i < b + 32; i++) {
        const v = rintEven(f(x[i]! * id));
        q += v;
        xhat[i] = scale * v;
      }
      xs[b / 32] = scale;
      sum[b / 32] = q;
      xb[b / 32] = k ? f(d * q) : f16Round(f(d * q));
    }
  }
  return { xhat, xs, xb, sum };
}

/**
 * Per block of 32 of each row, the weight's minimum M as the kernels use it: W = S·q + M (Q4_1, Q5_1)
 * or S·q − M (Q4_K, Q5_K); 0 for the other types. Read by dequantizing the matrix with its quants
 * zeroed (then W = ±M).
 */
export function blockMins(w: WeightMatrix): Float64Array {
  const nb = w.cols / 32;
  const out = new Float64Array(w.rows * nb);
  const quants: Partial<Record<GGMLType, [number, number, number]>> = {
    // [block bytes, first quant byte, end]
    [GGMLType.Q4_1]: [20, 4, 20],
    [GGMLType.Q5_1]: [24, 4, 24],
    [GGMLType.Q4_K]: [144, 16, 144],
    [GGMLType.Q5_K]: [176, 16, 176],
    [GGMLType.Q2_K]: [84, 16, 80],
  };
  const geo = quants[w.type];
  if (geo === undefined) return out;
  const [bytes, a, b] = geo;
  const data = w.data.slice(0, w.rows * w.rowBytes);
  for (let o = 0; o < data.length; o += bytes) data.fill(0, o + a, o + b);
  const dq = dequantize(w.type, data, w.rows * w.cols, w.cols);
  const sign = isKQuant(w.type) ? -1 : 1;
  for (let r = 0; r < w.rows; r++) {
    for (let j = 0; j < nb; j++) {
      // Q2_K has a minimum per 16: the larger one (only |M| is used for it).
      const o = r * w.cols + j * 32;
      out[r * nb + j] =
        w.type === GGMLType.Q2_K ? Math.max(Math.abs(dq[o]!), Math.abs(dq[o + 16]!)) : sign * dq[o]!;
    }
  }
  return out;
}

export interface Expected {
  /** nTokens × rows, in double: the kernels' result up to f32 rounding. */
  want: Float64Array;
  /** Per output: a bound on the f32 rounding of the kernels' sum (see the test). */
  bound: Float64Array;
  /** Per output: Σ|W·x̂| (for relative errors). */
  mag: Float64Array;
}

/**
 * What matmul of a packed quantized type computes, in double, and the bound on its f32 rounding:
 * per block the exact integer sum I is scaled as f32(I)·(S·xs) (two roundings) and added to the
 * running sum (one rounding), with ±M·xb for the affine types (one more of each), so with
 * u = 2⁻²⁴ and nb blocks the error is at most (2·nb + 8)·u·(Σ_c (|W[r,c]| + |M_b|)·|x̂_c| + Σ_b |M_b·xb_b|).
 */
export function expectedQuantMatmul(w: WeightMatrix, x: Float32Array, nTokens: number): Expected {
  const { rows, cols } = w;
  const nb = cols / 32;
  const q = quantizeActivations(x, nTokens, cols, w.type);
  const dq = dequantize(w.type, w.data, rows * cols, cols);
  const mins = blockMins(w);
  const affinePlus = w.type === GGMLType.Q4_1 || w.type === GGMLType.Q5_1;
  const want = new Float64Array(nTokens * rows);
  const bound = new Float64Array(nTokens * rows);
  const mag = new Float64Array(nTokens * rows);
  for (let t = 0; t < nTokens; t++) {
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      let m = 0;
      let big = 0;
      for (let j = 0; j < nb; j++) {
        const M = mins[r * nb + j]!;
        for (let c = j * 32; c < j * 32 + 32; c++) {
          const p = dq[r * cols + c]! * q.xhat[t * cols + c]!;
          sum += p;
          m += Math.abs(p);
          big += (Math.abs(dq[r * cols + c]!) + Math.abs(M)) * Math.abs(q.xhat[t * cols + c]!);
        }
        const b = t * nb + j;
        // Q4_1/Q5_1: the kernels add M·xb where the exact dot has M·Σx̂ = M·xs·Σq.
        if (affinePlus) sum += M * (q.xb[b]! - q.xs[b]! * q.sum[b]!);
        big += Math.abs(M * q.xb[b]!);
      }
      want[t * rows + r] = sum;
      mag[t * rows + r] = m;
      bound[t * rows + r] = (2 * nb + 8) * 2 ** -24 * big + 1e-30;
    }
  }
  return { want, bound, mag };
}

/**
 * The reference kernels with the kernels' activation quantization for packed types: the "exact
 * model" of the WebAssembly kernels, for comparing whole forward passes (f32 versus double
 * rounding apart). Q4_1 and Q5_1 are not covered (their f16-rounded Q8_1 sums are not emulated).
 */
export function quantizingReference(): Kernels {
  return {
    ...referenceKernels,
    name: "reference with quantized activations",
    matmul(w, x, nTokens, out) {
      if (!PACKED_TYPES.includes(w.type)) {
        referenceKernels.matmul(w, x, nTokens, out);
        return;
      }
      const xq = Float32Array.from(quantizeActivations(x, nTokens, w.cols, w.type).xhat);
      referenceKernels.matmul(w, xq, nTokens, out);
    },
  };
}
