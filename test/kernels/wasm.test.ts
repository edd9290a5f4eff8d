import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, TYPE_GEOMETRY, typeName } from "../../src/gguf/types.js";
import type { WeightMatrix } from "../../src/kernels/kernels.js";
import { referenceKernels } from "../../src/kernels/reference.js";
import { selectKernels } from "../../src/kernels/select.js";
import {
  createWasmKernels,
  relaxedSimdAvailable,
  WASM_PATH,
  type WasmBuild,
  type WasmKernels,
} from "../../src/kernels/wasm-kernels.js";
import type { BatchSeq } from "../../src/model/forward.js";
import { generate } from "../../src/model/generate.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { dequantize, quantize, rowBytes } from "../../src/quant/index.js";
import { Rng } from "../../src/sampling/rng.js";
import { logitsAfter } from "../helpers/forward.js";
import { STORIES_260K, testModel, VOCAB_SPM } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";
import { expectedQuantMatmul, PACKED_TYPES, quantizeActivations, quantizingReference } from "./emulate.js";

/**
 * The WebAssembly SIMD matmul against the reference kernels, per weight type.
 *
 * Float types (F32, F16, BF16): the reference sums in double precision, the kernels in float32
 * (each output one f32x4 accumulator over the exact weights, then a fixed horizontal sum). Each
 * lane sums cols/4 products, so with u = 2^-24 the error is at most about
 * (cols/4 + 3)·u·Σ_c |W[r,c]·x[t,c]|, plus one rounding of each product; the bound used is
 * (cols/4 + 8)·u·Σ|W·x| (+1e-30 for all-zero rows).
 *
 * Quantized types: the kernels quantize the activations as llama.cpp does (8-bit, a scale per 32 or,
 * for the K-quants, per 256; see emulate.ts) and compute exact integer block sums, scaled in f32. They
 * are compared with the reference on the same quantized activations x̂ (emulated here), within the
 * f32 rounding bound of expectedQuantMatmul; a layout mistake gives errors of order Σ|W·x̂|. The
 * quantization itself moves each output by at most Σ_blocks (d/2)·Σ|W| from the float product,
 * which is llama.cpp's error (test/model compares with llama.cpp).
 *
 * Decoded weights are bit-identical to the reference dequantize for every type.
 */

const F32_EPS = 2 ** -24;
const BUILD_SCRIPT = new URL("../../scripts/build-kernels.mjs", import.meta.url);

const TYPES: GGMLType[] = [...SUPPORTED_WEIGHT_TYPES];

/** Element counts per block (1 for float types). */
function blockOf(type: GGMLType): number {
  return TYPE_GEOMETRY[type]!.blockSize;
}

function randoms(rng: Rng, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * scale;
  return a;
}

function matrix(rng: Rng, type: GGMLType, rows: number, cols: number, scale = 1): WeightMatrix {
  const data = quantize(type, randoms(rng, rows * cols, scale), cols);
  return {
    name: `${typeName(type)} ${rows}x${cols}`,
    type,
    rows,
    cols,
    data,
    rowBytes: rowBytes(type, cols),
  };
}

/**
 * Shapes per type: rows not a multiple of 4 (1, 3, 5, 37) and, for float types, odd column counts;
 * 29 rows take every path of the packed one-token kernel (4 interleaved groups, 2, then 1).
 */
function shapesFor(type: GGMLType): [number, number][] {
  const b = blockOf(type);
  if (b === 1)
    return [
      [1, 1],
      [3, 7],
      [5, 33],
      [37, 130],
      [64, 64],
      [13, 515],
    ];
  if (b === 32)
    return [
      [1, 32],
      [3, 96],
      [37, 160],
      [64, 512],
      [7, 2048],
      [6, 288],
      [29, 64],
    ];
  return [
    [1, 256],
    [5, 512],
    [37, 768],
    [8, 2048],
    [29, 256],
  ];
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

/**
 * Worst error over all outputs as a fraction of its bound (≤ 1 passes), and the worst error
 * relative to Σ|W·x| (Σ|W·x̂| for quantized types).
 */
function worstError(
  w: WeightMatrix,
  x: Float32Array,
  nTokens: number,
  got: Float32Array,
): { ratio: number; relative: number } {
  let ratio = 0;
  let relative = 0;
  if (PACKED_TYPES.includes(w.type)) {
    const e = expectedQuantMatmul(w, x, nTokens);
    for (let i = 0; i < got.length; i++) {
      const err = Math.abs(got[i]! - e.want[i]!);
      ratio = Math.max(ratio, err / e.bound[i]!);
      if (e.mag[i]! > 0) relative = Math.max(relative, err / e.mag[i]!);
    }
    return { ratio, relative };
  }
  const want = new Float32Array(nTokens * w.rows);
  referenceKernels.matmul(w, x, nTokens, want);
  const dq = dequantize(w.type, w.data, w.rows * w.cols, w.cols);
  for (let t = 0; t < nTokens; t++) {
    for (let r = 0; r < w.rows; r++) {
      let mag = 0;
      for (let c = 0; c < w.cols; c++) mag += Math.abs(dq[r * w.cols + c]! * x[t * w.cols + c]!);
      const err = Math.abs(got[t * w.rows + r]! - want[t * w.rows + r]!);
      const bound = (w.cols / 4 + 8) * F32_EPS * mag + 1e-30;
      ratio = Math.max(ratio, err / bound);
      if (mag > 0) relative = Math.max(relative, err / mag);
    }
  }
  return { ratio, relative };
}

beforeAll(async () => {
  // `npm test` builds the module first (pretest); this covers running vitest directly on a fresh clone.
  if (!existsSync(WASM_PATH))
    execFileSync(process.execPath, [fileURLToPath(BUILD_SCRIPT)], { stdio: "inherit" });
});

// Both builds (SIMD128, and relaxed SIMD where this Node runs it) against the reference.
const BUILDS: WasmBuild[] = relaxedSimdAvailable() ? ["simd", "relaxed"] : ["simd"];
for (const build of BUILDS) {
  describe(`${build} build`, () => {
    let wasm: WasmKernels;
    beforeAll(async () => {
      wasm = await createWasmKernels({ build });
    });

    describe("WebAssembly matmul against the reference", () => {
      for (const type of TYPES) {
        it(`${typeName(type)}: every shape and batch (1..17 tokens) within the f32 rounding bound`, () => {
          const rng = new Rng(1000 + type);
          let worst = 0;
          for (const [rows, cols] of shapesFor(type)) {
            const w = matrix(rng, type, rows, cols);
            for (const nTokens of [1, 2, 3, 8, 17]) {
              const x = randoms(rng, nTokens * cols);
              const got = new Float32Array(nTokens * rows).fill(Number.NaN);
              wasm.matmul(w, x, nTokens, got);
              const e = worstError(w, x, nTokens, got);
              expect(e.ratio, `${rows}x${cols}, ${nTokens} tokens`).toBeLessThanOrEqual(1);
              worst = Math.max(worst, e.relative);
            }
          }
          // Typical f32 rounding, far inside the bound: a layout mistake gives errors of order 1.
          expect(worst).toBeLessThan(1e-6);
        });
      }

      it("quantized types: the activation quantization is llama.cpp's error, within Σ_b (d_b/2)·Σ|W|", () => {
        const rng = new Rng(3);
        for (const type of PACKED_TYPES) {
          const cols = blockOf(type) === 256 ? 512 : 96;
          const w = matrix(rng, type, 9, cols);
          const x = randoms(rng, 3 * cols);
          const got = new Float32Array(3 * w.rows);
          const want = new Float32Array(3 * w.rows);
          wasm.matmul(w, x, 3, got);
          referenceKernels.matmul(w, x, 3, want);
          const q = quantizeActivations(x, 3, cols, type);
          const dq = dequantize(type, w.data, w.rows * cols, cols);
          for (let t = 0; t < 3; t++) {
            for (let r = 0; r < w.rows; r++) {
              let bound = 0;
              for (let c = 0; c < cols; c++) {
                // |x − x̂| ≤ d/2 plus the f16 rounding of d (2^-11 relative, times |q| ≤ 127).
                const d = q.xs[(t * cols + c) >> 5]!;
                bound += Math.abs(dq[r * cols + c]!) * (0.5 + 127 * 2 ** -11) * d * (1 + 1e-6);
              }
              // The f16-rounded Q8_1 sums of Q4_1/Q5_1 add a little more: allow 1% for those and for f32.
              const err = Math.abs(got[t * w.rows + r]! - want[t * w.rows + r]!);
              expect(err, `${typeName(type)} row ${r}`).toBeLessThanOrEqual(bound * 1.01 + 1e-6);
            }
          }
        }
      });

      it("handles weights with small (f16-subnormal) scales, rows of zeros and zero or tiny activations", () => {
        const rng = new Rng(5);
        for (const type of TYPES) {
          const cols = blockOf(type) === 256 ? 512 : 64;
          const w = matrix(rng, type, 9, cols, 1e-4);
          w.data.fill(0, 0, w.rowBytes); // row 0: all zero bytes
          const x = randoms(rng, 3 * cols);
          x.fill(0, 0, 40); // a first block (and more) of zeros
          for (let i = cols; i < 2 * cols; i++) x[i]! *= 1e-6; // a token of tiny values (f16-subnormal scales)
          const got = new Float32Array(3 * w.rows);
          wasm.matmul(w, x, 3, got);
          expect(worstError(w, x, 3, got).ratio, typeName(type)).toBeLessThanOrEqual(1);
        }
      });

      it("decodes every type exactly as the reference dequantize does, bit for bit", () => {
        const rng = new Rng(9);
        for (const type of TYPES) {
          for (const [rows, cols] of shapesFor(type)) {
            for (const scale of [1, 1e-3, 1e-6]) {
              const w = matrix(rng, type, rows, cols, scale);
              const want = dequantize(type, w.data, rows * cols, cols);
              expect(bitsEqual(wasm.dequantize(w), want), `${typeName(type)} ${rows}x${cols} ×${scale}`).toBe(
                true,
              );
            }
          }
        }
      });

      it("decodes every f16 bit pattern (zeros, subnormals, infinities, NaNs) exactly", () => {
        // In order (groups of 32 all normal, or holding the specials) and shuffled (specials scattered
        // among normals); row lengths that take the 32-element path, its exact fallback and the 4-tail.
        const rng = new Rng(13);
        const shuffled = Array.from({ length: 65536 }, (_, h) => h);
        for (let i = shuffled.length - 1; i > 0; i--) {
          const j = rng.nextU32() % (i + 1);
          [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
        }
        for (const order of ["in order", "shuffled"]) {
          for (const cols of [4, 32, 36, 64]) {
            const rows = Math.ceil(65536 / cols);
            const data = new Uint8Array(rows * cols * 2);
            for (let i = 0; i < rows * cols; i++) {
              const h = order === "shuffled" ? shuffled[i % 65536]! : i % 65536;
              data[2 * i] = h & 0xff;
              data[2 * i + 1] = h >>> 8;
            }
            const w: WeightMatrix = {
              name: "f16 patterns",
              type: GGMLType.F16,
              rows,
              cols,
              data,
              rowBytes: 2 * cols,
            };
            const want = dequantize(GGMLType.F16, data, rows * cols, cols);
            expect(bitsEqual(wasm.dequantize(w), want), `${order}, rows of ${cols}`).toBe(true);
          }
        }
      });

      it("copies a matrix again when its data changes, and keeps separate matrices apart", () => {
        const rng = new Rng(11);
        const w = matrix(rng, GGMLType.Q8_0, 8, 64);
        const x = randoms(rng, 64);
        const a = new Float32Array(8);
        const b = new Float32Array(8);
        wasm.matmul(w, x, 1, a);
        w.data = quantize(GGMLType.Q8_0, randoms(rng, 8 * 64), 64);
        wasm.matmul(w, x, 1, b);
        expect(worstError(w, x, 1, b).ratio).toBeLessThanOrEqual(1);
        expect(bitsEqual(a, b)).toBe(false);
      });

      it("works in place on activations in its own memory, with the same results", () => {
        const rng = new Rng(12);
        for (const type of TYPES) {
          const cols = blockOf(type) === 256 ? 512 : blockOf(type) === 32 ? 96 : 37;
          const w = matrix(rng, type, 13, cols);
          const x = randoms(rng, 5 * cols);
          const plain = new Float32Array(5 * w.rows);
          wasm.matmul(w, x, 5, plain);
          const xi = wasm.allocFloat32(x.length)!;
          const oi = wasm.allocFloat32(plain.length)!;
          expect(wasm.owns(xi) && wasm.owns(oi) && !wasm.owns(x)).toBe(true);
          xi.set(x);
          wasm.matmul(w, xi, 5, oi);
          expect(bitsEqual(oi, plain), typeName(type)).toBe(true);
          wasm.freeFloat32(xi);
          wasm.freeFloat32(oi);
        }
      });

      it("falls back to the reference for types it does not handle", () => {
        expect(wasm.supports(GGMLType.Q8_1)).toBe(false);
        expect(wasm.name).toBe("wasm");
        expect(wasm.getRows).toBe(referenceKernels.getRows);
      });
    });

    describe("batch invariance", () => {
      it("a batch of N tokens gives, bit for bit, what N one-token matmuls give, for every type", () => {
        const rng = new Rng(77);
        for (const type of TYPES) {
          for (const [rows, cols] of shapesFor(type)) {
            const w = matrix(rng, type, rows, cols);
            for (const n of [2, 3, 4, 5, 8, 17]) {
              const x = randoms(rng, n * cols);
              const batched = new Float32Array(n * rows);
              wasm.matmul(w, x, n, batched);
              const single = new Float32Array(n * rows);
              const one = new Float32Array(rows);
              for (let t = 0; t < n; t++) {
                wasm.matmul(w, x.subarray(t * cols, (t + 1) * cols), 1, one);
                single.set(one, t * rows);
              }
              expect(bitsEqual(batched, single), `${typeName(type)} ${rows}x${cols}, ${n} tokens`).toBe(true);
            }
          }
        }
      });

      it("a token's result does not depend on its batch mates' values", () => {
        const rng = new Rng(78);
        for (const type of PACKED_TYPES) {
          const cols = blockOf(type) === 256 ? 512 : 96;
          const w = matrix(rng, type, 11, cols);
          const x = randoms(rng, 6 * cols);
          const a = new Float32Array(6 * w.rows);
          wasm.matmul(w, x, 6, a);
          // Same token 2, different neighbours (one of them huge, one all zeros).
          const y = randoms(rng, 6 * cols, 1e3);
          y.set(x.subarray(2 * cols, 3 * cols), 2 * cols);
          y.fill(0, 4 * cols, 5 * cols);
          const b = new Float32Array(6 * w.rows);
          wasm.matmul(w, y, 6, b);
          expect(bitsEqual(a.subarray(2 * w.rows, 3 * w.rows), b.subarray(2 * w.rows, 3 * w.rows))).toBe(
            true,
          );
        }
      });
    });
  });
}

describe("models with the WebAssembly kernels", () => {
  const dir = tempDir();
  const synthesized = new Map<GGMLType, string>();
  /** A k256-shaped llama of this weight type, synthesized once per file. */
  const synth = (type: GGMLType): string => {
    let path = synthesized.get(type);
    if (path === undefined) {
      path = join(dir, `k256-${typeName(type)}.gguf`);
      synthModel({
        arch: "llama",
        shape: SHAPES.k256!,
        type,
        vocabPath: testModel(VOCAB_SPM),
        out: path,
        seed: 3,
      });
      synthesized.set(type, path);
    }
    return path;
  };

  it("stories260K: greedy 32 tokens equal the reference kernels' tokens", async () => {
    const path = testModel(STORIES_260K);
    const ref = loadModel(path, { kernels: referenceKernels });
    const fast = loadModel(path, { kernels: await selectKernels("wasm") });
    const opts = { maxTokens: 32, stopAtEog: false, sampling: { temperature: 0 } };
    const want = generate(ref, "Once upon a time", opts);
    const got = generate(fast, "Once upon a time", opts);
    expect(got.tokens).toEqual(want.tokens);
    expect(got.text).toBe(want.text);
  });

  for (const type of [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F16]) {
    it(`synthesized ${typeName(type)} model (k256): logits as the reference's with quantized activations`, async () => {
      // The kernels' exact model (emulate.ts) in double, against the forward pass in WebAssembly (f32
      // matmuls, attention, norms): logits have std ≈ 1; measured differences 1e-6..1e-5. Now and
      // then an activation lands within f32 rounding of a quantization boundary and its 8-bit value
      // differs by one: on Q4_K, 14 of 40 prompts of 40 tokens, moving logits by up to 0.065 (0.012
      // on average). A layout or attention mistake moves them all by order 1: the bound is on the
      // largest difference and on the mean.
      const path = synth(type);
      const ref = loadModel(path, { kernels: quantizingReference() });
      const fast = loadModel(path, { kernels: await createWasmKernels() });
      const rng = new Rng(type);
      const V = ref.config.vocabSize;
      for (const len of [1, 9, 40]) {
        const prompt = [1, ...Array.from({ length: len - 1 }, () => 3 + (rng.nextU32() % (V - 3)))];
        const a = logitsAfter(ref, prompt);
        const b = logitsAfter(fast, prompt);
        let m = 0;
        let sum = 0;
        for (let i = 0; i < V; i++) {
          m = Math.max(m, Math.abs(a[i]! - b[i]!));
          sum += Math.abs(a[i]! - b[i]!);
        }
        expect(m, `prompt of ${len}`).toBeLessThan(0.1);
        expect(sum / V, `prompt of ${len}`).toBeLessThan(0.02);
      }
    });
  }

  it("a sequence's logits are bit-identical alone and in a mixed batch, with f32 and f16 KV caches", async () => {
    for (const [type, kvType] of [
      [GGMLType.Q4_K, "f16"],
      [GGMLType.Q8_0, "f32"],
      [GGMLType.F32, "f32"],
      [GGMLType.F32, "f16"],
    ] as const) {
      const model = loadModel(synth(type), { kernels: await createWasmKernels() });
      const rng = new Rng(21);
      const V = model.config.vocabSize;
      const toks = (n: number) => [1, ...Array.from({ length: n - 1 }, () => 3 + (rng.nextU32() % (V - 3)))];
      const a = toks(12);
      const b = toks(30);
      const alone = logitsAfter(model, a, kvType);
      const kv = new KVCacheStorage(model.config, 8, 16, undefined, kvType);
      const batch: BatchSeq[] = [
        { tokens: b, pos: 0, blockTable: [0, 1], logits: "none" },
        { tokens: a, pos: 0, blockTable: [4] },
        { tokens: toks(3), pos: 0, blockTable: [6] },
      ];
      const together = model.transformer.forward(kv, batch)[1]!;
      expect(bitsEqual(together, alone), `${typeName(type)}, ${kvType} KV`).toBe(true);
      kv.dispose();
    }
  }, 240_000);
});
