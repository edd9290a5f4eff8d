import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import type { WeightMatrix } from "../../src/kernels/kernels.js";
import { kernelImports, relaxedDot } from "../../src/kernels/wasm-imports.js";
import {
  chooseBuild,
  createWasmKernels,
  relaxedSimdAvailable,
  WASM_PATHS,
} from "../../src/kernels/wasm-kernels.js";
import { quantize, rowBytes } from "../../src/quant/index.js";
import { Rng } from "../../src/sampling/rng.js";
import { PACKED_TYPES } from "./emulate.js";

/**
 * The two builds of the WebAssembly kernels and the choice between them at start-up. Node 22 and
 * later (CI runs Node 24) run the relaxed-SIMD build with no flag, so here, as in CI, both builds
 * run; wasm.test.ts checks each against the reference. Node 20 (unsupported) has relaxed SIMD only
 * behind a V8 flag, which Spindle no longer turns on: there the simd build is the one that runs.
 */

const NODE_MAJOR = Number(process.versions.node.split(".")[0]);
const BUILD_SCRIPT = new URL("../../scripts/build-kernels.mjs", import.meta.url);

beforeAll(() => {
  if (!(existsSync(WASM_PATHS.simd) && existsSync(WASM_PATHS.relaxed)))
    execFileSync(process.execPath, [fileURLToPath(BUILD_SCRIPT)], { stdio: "inherit" });
});

const envBefore = process.env.SPINDLE_WASM_BUILD;
afterEach(() => {
  if (envBefore === undefined) delete process.env.SPINDLE_WASM_BUILD;
  else process.env.SPINDLE_WASM_BUILD = envBefore;
});

function matrix(rng: Rng, type: GGMLType, rows: number, cols: number): WeightMatrix {
  const f = new Float32Array(rows * cols);
  for (let i = 0; i < f.length; i++) f[i] = rng.next() * 2 - 1;
  return { name: "w", type, rows, cols, data: quantize(type, f, cols), rowBytes: rowBytes(type, cols) };
}

function randoms(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.next() * 2 - 1;
  return a;
}

/** How many outputs differ in their bits. */
function bitDiffs(a: Float32Array, b: Float32Array): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) n++;
  return n;
}

describe("WebAssembly builds", () => {
  it("Node 22 and later run the relaxed-SIMD build, and it is the default there", () => {
    // Node 22 and later on x64 and arm64 (CI's and users' platforms) have relaxed SIMD by default.
    expect(relaxedSimdAvailable()).toBe(NODE_MAJOR >= 22);
    delete process.env.SPINDLE_WASM_BUILD;
    expect(chooseBuild()).toBe(NODE_MAJOR >= 22 ? "relaxed" : "simd");
    expect(chooseBuild("simd")).toBe("simd");
    process.env.SPINDLE_WASM_BUILD = "simd";
    expect(chooseBuild()).toBe("simd");
    process.env.SPINDLE_WASM_BUILD = "fast";
    expect(() => chooseBuild()).toThrow(/SPINDLE_WASM_BUILD="fast" must be "simd" or "relaxed"/);
  });

  it.skipIf(NODE_MAJOR < 22)("float matmuls differ in the last bits (fused multiply-adds)", async () => {
    const simd = await createWasmKernels({ build: "simd", threads: 1 });
    const relaxed = await createWasmKernels({ build: "relaxed", threads: 1 });
    expect([simd.build, relaxed.build]).toEqual(["simd", "relaxed"]);
    const rng = new Rng(5);
    const cols = 512;
    const nTokens = 4;
    const x = randoms(rng, nTokens * cols);
    for (const type of [GGMLType.F32, GGMLType.F16, GGMLType.BF16]) {
      const w = matrix(rng, type, 64, cols);
      const a = new Float32Array(nTokens * w.rows);
      const b = new Float32Array(nTokens * w.rows);
      simd.matmul(w, x, nTokens, a);
      relaxed.matmul(w, x, nTokens, b);
      // The largest difference against the largest output (single outputs can cancel to near 0).
      let diff = 0;
      let scale = 0;
      for (let i = 0; i < a.length; i++) {
        diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
        scale = Math.max(scale, Math.abs(a[i]!));
      }
      // One rounding per step instead of two: most of 256 sums of 512 products move by an ulp or so.
      expect(bitDiffs(a, b), `type ${type}`).toBeGreaterThan(a.length / 4);
      expect(diff / scale, `type ${type}`).toBeLessThan(1e-5);
    }
  });

  it("this Node's relaxed 8-bit dot has one of the known lowerings (it decides Q8_0's tiled path)", () => {
    const { kind } = relaxedDot();
    if (NODE_MAJOR < 22) expect(kind).toBe("unavailable");
    else expect(["u8×i8", "saturating", "i8×i8"]).toContain(kind);
    expect(kernelImports(null).kernels!.dotU8).toBe(kind === "u8×i8" ? 1 : 0);
  });

  it.skipIf(NODE_MAJOR < 22)(
    "quantized matmuls give the same bits in both builds: the relaxed build's 8-bit tiles against the i16 ones",
    async () => {
      // From unpackMin tokens on, the relaxed build multiplies unpacked weights as bytes with the
      // relaxed dot (every packed type; Q8_0 where the dot is u8 × i8, see relaxedDot), the simd
      // build as i16: the integer block sums are the same, so the results must be too. Token counts
      // cover the fused path (1, 2), the tiles of 4 and the single-token tail (3, 5, 7), rows a group
      // of 4 and a partial one (70 = 17 · 4 + 2), over 2 threads too.
      const simd = await createWasmKernels({ build: "simd", threads: 1 });
      const relaxed = await createWasmKernels({ build: "relaxed", threads: 2 });
      await relaxed.ready();
      const rng = new Rng(7);
      // PACKED_TYPES: the eight types of the 8-bit tiles, and the low-bit ones (their own path, the same in both).
      for (const type of PACKED_TYPES) {
        const cols = 512;
        const w = matrix(rng, type, 70, cols);
        for (const nTokens of [1, 2, 3, 4, 5, 7, 12]) {
          const x = randoms(rng, nTokens * cols);
          const a = new Float32Array(nTokens * w.rows);
          const b = new Float32Array(nTokens * w.rows);
          simd.matmul(w, x, nTokens, a);
          relaxed.matmul(w, x, nTokens, b);
          expect(bitDiffs(a, b), `type ${type}, ${nTokens} tokens`).toBe(0);
        }
      }
      await relaxed.close?.();
    },
  );

  it.skipIf(NODE_MAJOR < 22)(
    "the relaxed build runs on the kernel threads too: 2 threads give 1 thread's bits",
    async () => {
      const one = await createWasmKernels({ build: "relaxed", threads: 1 });
      const two = await createWasmKernels({ build: "relaxed", threads: 2 });
      await two.ready();
      const rng = new Rng(6);
      const w = matrix(rng, GGMLType.F32, 256, 1024);
      const x = randoms(rng, 16 * 1024);
      const a = new Float32Array(16 * 256);
      const b = new Float32Array(16 * 256);
      one.matmul(w, x, 16, a);
      two.matmul(w, x, 16, b);
      expect(bitDiffs(a, b)).toBe(0);
      await two.close?.();
    },
  );
});
