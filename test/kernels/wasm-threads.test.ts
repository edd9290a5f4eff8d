import { describe, expect, it } from "vitest";
import { type GGMLType, SUPPORTED_WEIGHT_TYPES, TYPE_GEOMETRY, typeName } from "../../src/gguf/types.js";
import type { WeightMatrix } from "../../src/kernels/kernels.js";
import { createWasmKernelsSync } from "../../src/kernels/wasm-kernels.js";
import { quantize, rowBytes } from "../../src/quant/index.js";
import { Rng } from "../../src/sampling/rng.js";

/**
 * Matmul split over threads (rows by groups of 4, thread-pool.ts) gives the same bits as on one
 * thread, for every weight type, row counts that do not divide evenly, and batches of 1 to 9 tokens.
 */

const one = createWasmKernelsSync({ threads: 1 });
const two = createWasmKernelsSync({ threads: 2 });
const three = createWasmKernelsSync({ threads: 3 });

function matrix(rng: Rng, type: GGMLType, rows: number, cols: number): WeightMatrix {
  const f = new Float32Array(rows * cols);
  for (let i = 0; i < f.length; i++) f[i] = (rng.next() * 2 - 1) / Math.sqrt(cols);
  return { name: "w", type, rows, cols, data: quantize(type, f, cols), rowBytes: rowBytes(type, cols) };
}

describe.each(SUPPORTED_WEIGHT_TYPES.map((t) => [typeName(t), t] as const))("%s", (_name, type) => {
  it("threads give the same bits as one thread", () => {
    const rng = new Rng(type + 1);
    const cols = Math.max(256, TYPE_GEOMETRY[type]!.blockSize) * 2;
    for (const rows of [517, 1030]) {
      const w = matrix(rng, type, rows, cols);
      for (const nTokens of [1, 2, 3, 9]) {
        const x = new Float32Array(nTokens * cols);
        for (let i = 0; i < x.length; i++) x[i] = rng.next() * 2 - 1;
        const outs = [one, two, three].map((k) => {
          const out = new Float32Array(nTokens * rows);
          k.matmul(w, x, nTokens, out);
          return out;
        });
        expect(outs[1], `${rows} rows, ${nTokens} tokens, 2 threads`).toEqual(outs[0]);
        expect(outs[2], `${rows} rows, ${nTokens} tokens, 3 threads`).toEqual(outs[0]);
      }
    }
  });
});

describe("matmulShared (q, k, v and gate, up in one call)", () => {
  it.each([
    ["Q8_0", 8],
    ["Q4_K", 12],
    ["Q6_K", 14],
    ["F16", 1],
  ] as const)("%s: the same bits as separate matmuls, on 1 and 2 threads", (_name, type) => {
    const rng = new Rng(99 + type);
    const cols = 512;
    const ws = [matrix(rng, type, 520, cols), matrix(rng, type, 132, cols), matrix(rng, type, 132, cols)];
    for (const k of [one, two]) {
      for (const nTokens of [1, 2, 5]) {
        const x = k.allocFloat32(nTokens * cols)!;
        for (let i = 0; i < x.length; i++) x[i] = rng.next() * 2 - 1;
        for (const group of [ws, ws.slice(0, 2)]) {
          const outs = group.map((w) => k.allocFloat32(nTokens * w.rows)!);
          k.matmulShared!(group, x, nTokens, outs);
          group.forEach((w, i) => {
            const ref = new Float32Array(nTokens * w.rows);
            one.matmul(w, x, nTokens, ref);
            expect(outs[i], `${group.length} matrices, ${nTokens} tokens, ${k.threads} threads`).toEqual(ref);
          });
          for (const o of outs) k.freeFloat32(o);
        }
        k.freeFloat32(x);
      }
    }
  });
});

describe("matmulList (a layer's experts in one call)", () => {
  it.each([
    ["Q8_0", 8],
    ["Q4_K", 12],
    ["Q3_K", 11],
    ["F16", 1],
  ] as const)("%s: the same bits as a matmul per item, on 1 and 2 threads", (_name, type) => {
    const rng = new Rng(7 + type);
    const dim = 256;
    const ff = 512; // a K-quant block multiple: the down projections read rows of ff
    // Experts with 1, 2, 3 and 6 tokens (the 1–2-token fused path and the tiles), gate and up
    // sharing their x, then down reading the gate outputs; and an empty item.
    const counts = [1, 2, 3, 6, 0];
    const experts = counts.map(() => ({
      gate: matrix(rng, type, ff, dim),
      up: matrix(rng, type, ff, dim),
      down: matrix(rng, type, dim, ff),
    }));
    const total = counts.reduce((a, b) => a + b, 0);
    for (const k of [one, two]) {
      const x = k.allocFloat32(total * dim)!;
      for (let i = 0; i < x.length; i++) x[i] = rng.next() * 2 - 1;
      const gate = k.allocFloat32(total * ff)!;
      const up = k.allocFloat32(total * ff)!;
      const y = k.allocFloat32(total * dim)!;
      const rows = (a: Float32Array, width: number, from: number, n: number) =>
        a.subarray(from * width, (from + n) * width);
      let from = 0;
      const firsts: { ex: (typeof experts)[number]; from: number; n: number }[] = [];
      for (const [i, n] of counts.entries()) {
        firsts.push({ ex: experts[i]!, from, n });
        from += n;
      }
      k.matmulList!(
        firsts.flatMap(({ ex, from, n }) => {
          const xs = rows(x, dim, from, n); // one view: quantized once for both
          return [
            { w: ex.gate, x: xs, nTokens: n, out: rows(gate, ff, from, n) },
            { w: ex.up, x: xs, nTokens: n, out: rows(up, ff, from, n) },
          ];
        }),
      );
      k.matmulList!(
        firsts.map(({ ex, from, n }) => ({
          w: ex.down,
          x: rows(gate, ff, from, n),
          nTokens: n,
          out: rows(y, dim, from, n),
        })),
      );
      for (const { ex, from, n } of firsts) {
        if (n === 0) continue;
        const at = `${n} tokens, ${k.threads} threads`;
        for (const [w, xs, out, width] of [
          [ex.gate, rows(x, dim, from, n), rows(gate, ff, from, n), ff],
          [ex.up, rows(x, dim, from, n), rows(up, ff, from, n), ff],
          [ex.down, rows(gate, ff, from, n), rows(y, dim, from, n), dim],
        ] as const) {
          const ref = new Float32Array(n * width);
          one.matmul(w, xs, n, ref);
          expect(out, at).toEqual(ref);
        }
      }
      for (const a of [x, gate, up, y]) k.freeFloat32(a);
    }
  });
});
