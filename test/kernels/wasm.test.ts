import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../../src/gguf/types.js";
import type { WeightMatrix } from "../../src/kernels/kernels.js";
import { referenceKernels } from "../../src/kernels/reference.js";
import { selectKernels } from "../../src/kernels/select.js";
import { createWasmKernels, WASM_PATH, type WasmKernels } from "../../src/kernels/wasm-kernels.js";
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

/**
 * The WebAssembly SIMD kernels against the reference kernels.
 *
 * Tolerance of one matmul output: the reference sums in double precision, the WebAssembly kernels
 * in float32 (each output one f32x4 accumulator over the decoded row, then a fixed horizontal sum).
 * Each lane sums cols/4 products, so with u = 2^-24 the f32 error is at most about
 * (cols/4 + 3)·u·Σ_c |W[r,c]·x[t,c]|, plus one rounding of each product and of each decoded weight;
 * the bound used here is (cols/4 + 8)·u·Σ|W·x| (+1e-30 for all-zero rows). Measured errors are
 * far below it (random signs: about sqrt(cols)·u relative). Decoded weights are bit-identical to the
 * reference dequantize for every type.
 */

const F32_EPS = 2 ** -24;
const BUILD_SCRIPT = new URL("../../scripts/build-kernels.mjs", import.meta.url);

const TYPES: GGMLType[] = [...SUPPORTED_WEIGHT_TYPES];

/** Element counts per block (1 for float types). */
function blockOf(type: GGMLType): number {
  if (type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16) return 1;
  return type === GGMLType.Q4_K || type === GGMLType.Q5_K || type === GGMLType.Q6_K ? 256 : 32;
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

/** Shapes per type: rows not a multiple of 4 (1, 3, 5, 37) and, for float types, odd column counts. */
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
    ];
  return [
    [1, 256],
    [5, 512],
    [37, 768],
    [8, 2048],
  ];
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

/** Worst |got − want| / bound over all outputs, with the bound from the header comment. */
function worstError(
  w: WeightMatrix,
  x: Float32Array,
  nTokens: number,
  got: Float32Array,
  want: Float32Array,
): { ratio: number; relative: number } {
  const dq = dequantize(w.type, w.data, w.rows * w.cols, w.cols);
  let ratio = 0;
  let relative = 0;
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

let wasm: WasmKernels;
beforeAll(async () => {
  // `npm test` builds the module first (pretest); this covers running vitest directly on a fresh clone.
  if (!existsSync(WASM_PATH))
    execFileSync(process.execPath, [fileURLToPath(BUILD_SCRIPT)], { stdio: "inherit" });
  wasm = await createWasmKernels();
});

describe("WebAssembly matmul against the reference", () => {
  for (const type of TYPES) {
    it(`${typeName(type)}: every shape and batch within the f32 summation bound`, () => {
      const rng = new Rng(1000 + type);
      let worst = 0;
      for (const [rows, cols] of shapesFor(type)) {
        const w = matrix(rng, type, rows, cols);
        for (const nTokens of [1, 3, 17]) {
          const x = randoms(rng, nTokens * cols);
          const want = new Float32Array(nTokens * rows);
          const got = new Float32Array(nTokens * rows).fill(Number.NaN);
          referenceKernels.matmul(w, x, nTokens, want);
          wasm.matmul(w, x, nTokens, got);
          const e = worstError(w, x, nTokens, got, want);
          expect(e.ratio, `${rows}x${cols}, ${nTokens} tokens`).toBeLessThanOrEqual(1);
          worst = Math.max(worst, e.relative);
        }
      }
      // Typical f32 rounding, far inside the bound: a layout mistake gives errors of order 1.
      expect(worst).toBeLessThan(1e-6);
    });
  }

  it("handles weights with small (f16-subnormal) scales and rows of zeros", () => {
    const rng = new Rng(5);
    for (const type of TYPES) {
      const cols = blockOf(type) === 256 ? 512 : 64;
      const w = matrix(rng, type, 9, cols, 1e-4);
      w.data.fill(0, 0, w.rowBytes); // row 0: all zero bytes
      const x = randoms(rng, 2 * cols);
      const want = new Float32Array(2 * w.rows);
      const got = new Float32Array(2 * w.rows);
      referenceKernels.matmul(w, x, 2, want);
      wasm.matmul(w, x, 2, got);
      expect(worstError(w, x, 2, got, want).ratio, typeName(type)).toBeLessThanOrEqual(1);
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
    const want = new Float32Array(8);
    referenceKernels.matmul(w, x, 1, want);
    expect(worstError(w, x, 1, b, want).ratio).toBeLessThanOrEqual(1);
    expect(bitsEqual(a, b)).toBe(false);
  });

  it("delegates the other operations to the reference kernels", () => {
    expect(wasm.name).toBe("wasm");
    expect(wasm.rmsnorm).toBe(referenceKernels.rmsnorm);
    expect(wasm.attention).toBe(referenceKernels.attention);
    expect(wasm.getRows).toBe(referenceKernels.getRows);
  });
});

describe("batch invariance", () => {
  it("a batch of N tokens gives, bit for bit, what N one-token matmuls give, for every type", () => {
    const rng = new Rng(77);
    for (const type of TYPES) {
      for (const [rows, cols] of shapesFor(type)) {
        const w = matrix(rng, type, rows, cols);
        for (const n of [2, 3, 5, 17]) {
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
});

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

  for (const type of [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.F16]) {
    it(`synthesized ${typeName(type)} model (k256): logits within 2e-5 of the reference kernels'`, async () => {
      // Logits here have std ≈ 1; float32 against double summation over two layers: measured 1.3-1.8e-6.
      const path = synth(type);
      const ref = loadModel(path, { kernels: referenceKernels });
      const fast = loadModel(path, { kernels: await createWasmKernels() });
      const rng = new Rng(type);
      const V = ref.config.vocabSize;
      for (const len of [1, 9, 40]) {
        const prompt = [1, ...Array.from({ length: len - 1 }, () => 3 + (rng.nextU32() % (V - 3)))];
        const a = logitsAfter(ref, prompt);
        const b = logitsAfter(fast, prompt);
        let m = 0;
        for (let i = 0; i < V; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
        expect(m, `prompt of ${len}`).toBeLessThan(2e-5);
      }
    });
  }

  it("a sequence's logits are bit-identical alone and in a mixed batch", async () => {
    const model = loadModel(synth(GGMLType.Q4_K), { kernels: await createWasmKernels() });
    const rng = new Rng(21);
    const V = model.config.vocabSize;
    const toks = (n: number) => [1, ...Array.from({ length: n - 1 }, () => 3 + (rng.nextU32() % (V - 3)))];
    const a = toks(12);
    const b = toks(30);
    const alone = logitsAfter(model, a);
    const kv = new KVCacheStorage(model.config, 8);
    const batch: BatchSeq[] = [
      { tokens: b, pos: 0, blockTable: [0, 1], logits: "none" },
      { tokens: a, pos: 0, blockTable: [4] },
      { tokens: toks(3), pos: 0, blockTable: [6] },
    ];
    const together = model.transformer.forward(kv, batch)[1]!;
    expect(bitsEqual(together, alone)).toBe(true);
  });
});
