import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import type { AttentionSeq, Kernels, PagedKV, PagedKVF32, RopeParams } from "../../src/kernels/kernels.js";
import { geluTanh, referenceKernels } from "../../src/kernels/reference.js";
import { createWasmKernels, WASM_PATH, type WasmKernels } from "../../src/kernels/wasm-kernels.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { Rng } from "../../src/sampling/rng.js";
import { Sampler } from "../../src/sampling/sampler.js";

/**
 * The WebAssembly kernels other than matmul, against the reference kernels: rmsnorm, rope, swiglu,
 * addInPlace, storeKV and paged attention, on arrays in the kernel set's own memory (where the
 * forward pass keeps activations and KV pools), plus their fallback to the reference on other arrays,
 * the memory allocator, and KVCacheStorage's pools.
 *
 * Tolerances: these kernels compute in float32, the reference in double. rmsnorm, swiglu, rope: a
 * few roundings per output, |Δ| ≤ 1e-6·(|value| + scale of the inputs). Attention: scores are f32
 * dot products of headDim terms, exponentials have relative error < 2e-7, outputs are sums over the
 * context of weights (≤ 1) times values: measured below 1e-6 of max|v|; the test allows 1e-5.
 * storeKV copies, so it must match bit for bit.
 */

const BUILD_SCRIPT = new URL("../../scripts/build-kernels.mjs", import.meta.url);

let wasm: WasmKernels;
beforeAll(async () => {
  if (!existsSync(WASM_PATH))
    execFileSync(process.execPath, [fileURLToPath(BUILD_SCRIPT)], { stdio: "inherit" });
  wasm = await createWasmKernels();
});

function randoms(rng: Rng, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * scale;
  return a;
}

/** An array in the kernels' memory holding these values. */
function inWasm(values: Float32Array): Float32Array {
  const a = wasm.allocFloat32(values.length)!;
  a.set(values);
  return a;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>, n = a.length): number {
  let m = 0;
  for (let i = 0; i < n; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

describe("elementwise kernels in WebAssembly", () => {
  it("rmsnorm: rows of odd and even widths, in place and not", () => {
    const rng = new Rng(1);
    for (const dim of [1, 3, 8, 37, 288, 1025]) {
      const n = 5;
      const x = randoms(rng, n * dim, 3);
      const w = randoms(rng, dim);
      const want = new Float32Array(n * dim);
      referenceKernels.rmsnorm(x, w, n, dim, 1e-5, want);
      const xi = inWasm(x);
      const out = wasm.allocFloat32(n * dim)!;
      wasm.rmsnorm(xi, w, n, dim, 1e-5, out);
      expect(maxDiff(out, want), `dim ${dim}`).toBeLessThan(4e-6);
      wasm.rmsnorm(xi, w, n, dim, 1e-5, xi); // out = x
      expect(bitsEqual(xi, out), `dim ${dim} in place`).toBe(true);
      wasm.freeFloat32(xi);
      wasm.freeFloat32(out);
    }
  });

  it("swiglu and addInPlace, including large and tiny gates", () => {
    const rng = new Rng(2);
    for (const n of [1, 7, 64, 1539]) {
      const g = randoms(rng, n, 12);
      g[0] = -100;
      if (n > 1) g[1] = 100;
      const u = randoms(rng, n);
      const want = new Float32Array(n);
      referenceKernels.swiglu(g, u, n, want);
      const gi = inWasm(g);
      const ui = inWasm(u);
      wasm.swiglu(gi, ui, n, gi);
      for (let i = 0; i < n; i++)
        expect(Math.abs(gi[i]! - want[i]!), `swiglu ${n} @${i}`).toBeLessThanOrEqual(
          1e-6 * (Math.abs(want[i]!) + Math.abs(u[i]!)) + 1e-30,
        );
      const a = randoms(rng, n);
      const b = randoms(rng, n);
      const sum = a.slice();
      referenceKernels.addInPlace(sum, b, n);
      const ai = inWasm(a);
      wasm.addInPlace(ai, inWasm(b), n);
      expect(bitsEqual(ai, sum), `add ${n}`).toBe(true); // one f32 addition each: exact match
    }
  });

  it("swiglu split over 2 threads gives the bits of 1 thread (the tail with the last part)", async () => {
    const two = await createWasmKernels({ threads: 2 });
    const one = await createWasmKernels({ threads: 1 });
    const rng = new Rng(21);
    for (const n of [16_384, 16_387, 50_001]) {
      const g = randoms(rng, n, 12);
      const u = randoms(rng, n);
      const [a, b] = [two, one].map((k) => {
        const gi = k.allocFloat32(n)!;
        const ui = k.allocFloat32(n)!;
        const out = k.allocFloat32(n)!;
        gi.set(g);
        ui.set(u);
        k.swiglu(gi, ui, n, out);
        return Float32Array.from(out);
      });
      expect(bitsEqual(a!, b!), `swiglu ${n}`).toBe(true);
      const want = new Float32Array(n);
      referenceKernels.swiglu(g, u, n, want);
      expect(Math.abs(a![n - 1]! - want[n - 1]!), "the last element").toBeLessThanOrEqual(
        1e-6 * (Math.abs(want[n - 1]!) + Math.abs(u[n - 1]!)) + 1e-30,
      );
    }
  });

  it("argmax: the first index of the largest value, NaN never winning; −1 where the sampler decides", () => {
    const rng = new Rng(22);
    const firstMax = (a: Float32Array, n: number): number => {
      let best = -1;
      for (let i = 0; i < n; i++) if (!Number.isNaN(a[i]!) && (best < 0 || a[i]! > a[best]!)) best = i;
      return best;
    };
    for (const n of [1, 3, 4, 15, 16, 17, 33, 1000, 32_000, 32_001]) {
      const a = randoms(rng, n, 5);
      expect(wasm.argmax(inWasm(a), n), `random ${n}`).toBe(firstMax(a, n));
      // Ties (the maximum twice, the first one in the SIMD part or the tail), NaNs around it.
      const t = a.slice();
      const i = Math.floor(rng.next() * n);
      const j = Math.min(n - 1, i + 1 + Math.floor(rng.next() * 20));
      t[i] = 9;
      t[j] = 9;
      if (i > 0) t[i - 1] = Number.NaN;
      if (j + 1 < n) t[j + 1] = Number.NaN;
      expect(wasm.argmax(inWasm(t), n), `tie ${n} at ${i}, ${j}`).toBe(i);
      // Only part of the array counts.
      const m = Math.max(1, i);
      expect(wasm.argmax(inWasm(t), m), `prefix of ${n}`).toBe(firstMax(t, m));
    }
    const special = (values: number[]) => wasm.argmax(inWasm(Float32Array.from(values)), values.length);
    expect(special([Number.NaN, 1, Number.NaN, 2, 2])).toBe(3);
    expect(special([Number.NaN, Number.NaN, Number.NaN, Number.NaN, Number.NaN])).toBe(-1);
    expect(special([-Infinity, -Infinity, Number.NaN, -Infinity, -Infinity, -Infinity])).toBe(-1);
    expect(special([1, 2, Infinity, 3])).toBe(-1);
    expect(special([-0, 0, -1])).toBe(0); // −0 and +0 are equal, as in the sampler's comparison
    expect(wasm.argmax(Float32Array.from([1, 2, 3]), 3), "an array outside the kernels' memory").toBe(-1);
  });

  it("the sampler's greedy through the kernels' argmax picks greedyOf's token", () => {
    const rng = new Rng(23);
    const V = 1003;
    const fast = new Sampler({ temperature: 0 }, V, wasm);
    const slow = new Sampler({ temperature: 0 }, V);
    for (let r = 0; r < 20; r++) {
      const logits = inWasm(randoms(rng, V, 10));
      if (r % 4 === 1) logits[Math.floor(rng.next() * V)] = Infinity; // left to greedyOf
      if (r % 4 === 2) logits.fill(logits[7]!, 700, 720); // ties
      expect(fast.sample(logits, []).token, `row ${r}`).toBe(slow.sample(logits, []).token);
    }
    const banned = inWasm(new Float32Array(V).fill(-Infinity));
    expect(() => fast.sample(banned, [])).toThrow();
  });

  it("sampling's working copy: NaN becomes −∞, +∞ the largest float, the rest copied as is", () => {
    const rng = new Rng(29);
    const V = 1003;
    const src = inWasm(randoms(rng, V, 10));
    src[5] = Number.NaN;
    src[6] = Infinity;
    src[7] = -Infinity;
    src[V - 1] = Number.NaN; // the scalar tail
    src[V - 2] = Infinity;
    const dst = wasm.samplingScratch(V);
    expect(wasm.owns(dst)).toBe(true);
    expect(wasm.cleanCopy(src, dst, V)).toBe(true);
    const want = Array.from(src, (v) =>
      Number.isNaN(v) ? -Infinity : v === Infinity ? 3.4028234663852886e38 : v,
    );
    expect(Array.from(dst.subarray(0, V))).toEqual(want);
    // Outside the kernels' memory: declined, nothing written.
    expect(wasm.cleanCopy(new Float32Array(V), dst, V)).toBe(false);
  });

  it("sampling's softmax: the largest exactly 1, −∞ exactly 0, the rest within 4e-7 × (1 + |exponent|) of Math.exp; the f64 sum of its outputs", () => {
    const rng = new Rng(31);
    for (const V of [1003, 49152]) {
      for (const T of [0.3, 1, 1.7]) {
        const logits = randoms(rng, V, 8);
        for (let i = 0; i < V; i += 97) logits[i] = -Infinity;
        const x = inWasm(logits);
        const sum = wasm.softmax(x, V, 1 / T);
        let max = -Infinity;
        for (const v of logits) max = Math.max(max, v);
        let own = 0;
        let worst = 0;
        for (let i = 0; i < V; i++) {
          own += x[i]!;
          if (logits[i] === -Infinity) expect(x[i]).toBe(0);
          else if (logits[i] === max) expect(x[i]).toBe(1);
          else {
            // The exponent is formed in f32: its rounding (about 6e-8 of it) is the error that grows.
            const arg = (logits[i]! - max) / T;
            const ref = Math.exp(arg);
            if (ref > 1e-30) worst = Math.max(worst, Math.abs(x[i]! - ref) / ref / (1 + Math.abs(arg)));
          }
        }
        expect(worst, `V ${V}, T ${T}`).toBeLessThan(4e-7);
        expect(Math.abs(sum - own) / own).toBeLessThan(1e-12);
      }
    }
    const banned = inWasm(new Float32Array(1003).fill(-Infinity));
    expect(wasm.softmax(banned, 1003, 1)).toBe(0);
    expect(banned.every((v) => v === -Infinity)).toBe(true);
    expect(wasm.softmax(new Float32Array(8), 8, 1)).toBeNaN();
  });

  it("the sampler's full-vocabulary draw through the kernels draws what the TypeScript loops draw, seed for seed", () => {
    const rng = new Rng(37);
    const V = 32000;
    let same = 0;
    const rounds = 400;
    for (let r = 0; r < rounds; r++) {
      const params = { temperature: r % 2 ? 0.8 : 1.3, seed: r, ...(r % 3 === 0 ? { minP: 0.05 } : {}) };
      const logits = inWasm(randoms(rng, V, 4));
      if (r % 5 === 0) logits[11] = Number.NaN;
      const fast = new Sampler(params, V, wasm).sample(logits, []).token;
      const slow = new Sampler(params, V).sample(Float32Array.from(logits), []).token;
      if (fast === slow) same++;
    }
    // The same uniform draw lands on another token only when it falls within rounding of a boundary.
    expect(same).toBeGreaterThanOrEqual(rounds - 2);
  });

  it("the sampler's logprobs through the kernels: the same tokens, log-probabilities within 2e-6 of the TypeScript loops'", () => {
    const rng = new Rng(41);
    const V = 32000;
    for (let r = 0; r < 20; r++) {
      const params = { temperature: r % 2 ? 0 : 0.9, seed: r, logprobs: 5 };
      const logits = inWasm(randoms(rng, V, 6));
      if (r % 4 === 0) logits[17] = Number.NaN;
      if (r % 4 === 1) logits[23] = -Infinity;
      const fast = new Sampler(params, V, wasm).sample(logits, []);
      const slow = new Sampler(params, V).sample(Float32Array.from(logits), []);
      expect(fast.token).toBe(slow.token);
      expect(Math.abs(fast.logprob - slow.logprob)).toBeLessThan(2e-6);
      expect(fast.topLogprobs.map((t) => t.token)).toEqual(slow.topLogprobs.map((t) => t.token));
      for (const [i, t] of fast.topLogprobs.entries())
        expect(Math.abs(t.logprob - slow.topLogprobs[i]!.logprob)).toBeLessThan(2e-6);
    }
  });

  it("rope: normal and neox styles, partial rotation, frequency factors, scaled positions", () => {
    const rng = new Rng(3);
    const cases: { headDim: number; p: RopeParams }[] = [
      { headDim: 8, p: { style: "normal", dim: 8, freqBase: 10000, freqScale: 1 } },
      { headDim: 48, p: { style: "normal", dim: 48, freqBase: 10000, freqScale: 1 } },
      { headDim: 64, p: { style: "neox", dim: 64, freqBase: 1e6, freqScale: 1 } },
      { headDim: 64, p: { style: "neox", dim: 32, freqBase: 10000, freqScale: 0.25 } },
      { headDim: 6, p: { style: "neox", dim: 6, freqBase: 500000, freqScale: 1 } },
      {
        headDim: 16,
        p: {
          style: "neox",
          dim: 16,
          freqBase: 500000,
          freqScale: 1,
          freqFactors: randoms(rng, 8).map((v) => 1 + Math.abs(v) * 8),
        },
      },
    ];
    for (const { headDim, p } of cases) {
      const nTokens = 9;
      const nHeads = 3;
      const positions = Int32Array.from({ length: nTokens }, (_, i) => (i * 977) % 4096);
      const x = randoms(rng, nTokens * nHeads * headDim);
      const want = x.slice();
      referenceKernels.rope(want, nTokens, nHeads, headDim, positions, p);
      const xi = inWasm(x);
      wasm.rope(xi, nTokens, nHeads, headDim, positions, p);
      expect(maxDiff(xi, want), `${p.style} ${headDim}/${p.dim}`).toBeLessThan(5e-7);
      // The same positions again (the cos/sin table is reused), then other positions in the same array.
      const xj = inWasm(x);
      wasm.rope(xj, nTokens, nHeads, headDim, positions, p);
      expect(bitsEqual(xj, xi)).toBe(true);
      positions[4] = 5;
      const want2 = x.slice();
      referenceKernels.rope(want2, nTokens, nHeads, headDim, positions, p);
      const xk = inWasm(x);
      wasm.rope(xk, nTokens, nHeads, headDim, positions, p);
      expect(maxDiff(xk, want2), "changed positions").toBeLessThan(5e-7);
    }
  });

  it("falls back to the reference kernels, with their exact results, on arrays outside its memory", () => {
    const rng = new Rng(4);
    const x = randoms(rng, 3 * 40);
    const w = randoms(rng, 40);
    const a = new Float32Array(120);
    const b = new Float32Array(120);
    referenceKernels.rmsnorm(x, w, 3, 40, 1e-6, a);
    wasm.rmsnorm(x, w, 3, 40, 1e-6, b);
    expect(bitsEqual(a, b)).toBe(true);
    const g = x.slice();
    const h = x.slice();
    referenceKernels.swiglu(g, w, 40, g);
    wasm.swiglu(h, w, 40, h);
    expect(bitsEqual(g, h)).toBe(true);
  });
});

/** A K/V pool pair of `numBlocks` blocks, in the kernels' memory or plain, filled with noise. */
function pools(
  rng: Rng,
  numBlocks: number,
  blockSize: number,
  nKVHeads: number,
  headDim: number,
  mine: boolean,
): PagedKVF32 {
  const n = numBlocks * blockSize * nKVHeads * headDim;
  const k = mine ? wasm.allocFloat32(n)! : new Float32Array(n);
  const v = mine ? wasm.allocFloat32(n)! : new Float32Array(n);
  k.set(randoms(rng, n, 9)); // stale data everywhere: attention must read only the table's slots
  v.set(randoms(rng, n, 9));
  return { blockSize, nKVHeads, headDim, k, v };
}

function copyKV(kv: PagedKVF32): PagedKVF32 {
  return { ...kv, k: Float32Array.from(kv.k), v: Float32Array.from(kv.v) };
}

/** A random permutation of 0..n−1, dealt out as block tables of these sizes. */
function scatteredTables(rng: Rng, n: number, sizes: number[]): number[][] {
  const perm = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextU32() % (i + 1);
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  let o = 0;
  return sizes.map((s) => perm.slice(o, (o += s)));
}

describe("paged attention in WebAssembly", () => {
  const shapes = [
    { nHeads: 6, nKVHeads: 6, headDim: 48, blockSize: 16 },
    { nHeads: 8, nKVHeads: 2, headDim: 64, blockSize: 16 }, // GQA
    { nHeads: 4, nKVHeads: 1, headDim: 6, blockSize: 4 }, // MQA, headDim not a multiple of 4
    { nHeads: 2, nKVHeads: 2, headDim: 5, blockSize: 3 },
  ];

  for (const sh of shapes) {
    it(`${sh.nHeads} heads over ${sh.nKVHeads} KV heads of ${sh.headDim}, blocks of ${sh.blockSize}: several sequences, scattered blocks`, () => {
      const rng = new Rng(sh.headDim * 31 + sh.nKVHeads);
      const { nHeads, nKVHeads, headDim, blockSize } = sh;
      const kvDim = nKVHeads * headDim;
      const qDim = nHeads * headDim;
      // Three sequences: a long prefill, a decode step after 37 cached tokens, a mid-sized chunk after 5.
      const lens = [
        { pos: 0, count: 23 },
        { pos: 37, count: 1 },
        { pos: 5, count: 11 },
      ];
      const need = lens.map((l) => Math.ceil((l.pos + l.count) / blockSize));
      const numBlocks = need.reduce((a, b) => a + b, 0) + 3;
      const tables = scatteredTables(rng, numBlocks, need);
      const kv = pools(rng, numBlocks, blockSize, nKVHeads, headDim, true);
      const ref = copyKV(kv);
      // Fill the cached prefix of each sequence (positions < pos) through storeKV, both sides.
      const prefix: AttentionSeq[] = [];
      let rows = 0;
      lens.forEach((l, i) => {
        if (l.pos > 0) prefix.push({ row: rows, count: l.pos, pos: 0, blockTable: tables[i]! });
        rows += l.pos;
      });
      const pk = inWasm(randoms(rng, rows * kvDim));
      const pv = inWasm(randoms(rng, rows * kvDim));
      wasm.storeKV(kv, pk, pv, prefix);
      referenceKernels.storeKV(ref, pk, pv, prefix);
      expect(bitsEqual(kv.k, ref.k) && bitsEqual(kv.v, ref.v), "storeKV of the prefixes").toBe(true);
      // This step's batch.
      const seqs: AttentionSeq[] = [];
      let n = 0;
      lens.forEach((l, i) => {
        seqs.push({ row: n, count: l.count, pos: l.pos, blockTable: tables[i]! });
        n += l.count;
      });
      const k = inWasm(randoms(rng, n * kvDim));
      const v = inWasm(randoms(rng, n * kvDim));
      const q = inWasm(randoms(rng, n * qDim));
      wasm.storeKV(kv, k, v, seqs);
      referenceKernels.storeKV(ref, k, v, seqs);
      expect(bitsEqual(kv.k, ref.k) && bitsEqual(kv.v, ref.v), "storeKV of the batch").toBe(true);
      const out = wasm.allocFloat32(n * qDim)!;
      const want = new Float32Array(n * qDim);
      wasm.attention(kv, q, nHeads, seqs, out);
      referenceKernels.attention(ref, q, nHeads, seqs, want);
      expect(maxDiff(out, want)).toBeLessThan(1e-5);

      // Plain q and out (copied in and out) give the same bits.
      const out2 = new Float32Array(n * qDim);
      wasm.attention(kv, Float32Array.from(q), nHeads, seqs, out2);
      expect(bitsEqual(out2, out)).toBe(true);

      // Batch invariance: each sequence alone (its rows at row 0) gives the same bits.
      for (const s of seqs) {
        const qs = inWasm(q.slice(s.row * qDim, (s.row + s.count) * qDim));
        const os = wasm.allocFloat32(s.count * qDim)!;
        wasm.attention(kv, qs, nHeads, [{ ...s, row: 0 }], os);
        expect(bitsEqual(os, out.slice(s.row * qDim, (s.row + s.count) * qDim)), `alone at ${s.pos}`).toBe(
          true,
        );
      }
    });
  }

  it("chunked prefill gives, bit for bit, what one prefill gives; each query as a decode step too", () => {
    const rng = new Rng(9);
    const nHeads = 4;
    const nKVHeads = 2;
    const headDim = 32;
    const blockSize = 16;
    const T = 45;
    const kvDim = nKVHeads * headDim;
    const qDim = nHeads * headDim;
    const table = scatteredTables(rng, 8, [3])[0]!;
    const k = inWasm(randoms(rng, T * kvDim));
    const v = inWasm(randoms(rng, T * kvDim));
    const q = inWasm(randoms(rng, T * qDim));
    const whole = pools(rng, 8, blockSize, nKVHeads, headDim, true);
    const once = wasm.allocFloat32(T * qDim)!;
    wasm.storeKV(whole, k, v, [{ row: 0, count: T, pos: 0, blockTable: table }]);
    wasm.attention(whole, q, nHeads, [{ row: 0, count: T, pos: 0, blockTable: table }], once);
    for (const chunk of [1, 7, 16, 20]) {
      const kv = pools(rng, 8, blockSize, nKVHeads, headDim, true);
      for (let p = 0; p < T; p += chunk) {
        const c = Math.min(chunk, T - p);
        const kc = inWasm(k.slice(p * kvDim, (p + c) * kvDim));
        const vc = inWasm(v.slice(p * kvDim, (p + c) * kvDim));
        const qc = inWasm(q.slice(p * qDim, (p + c) * qDim));
        const oc = wasm.allocFloat32(c * qDim)!;
        const s = [{ row: 0, count: c, pos: p, blockTable: table }];
        wasm.storeKV(kv, kc, vc, s);
        wasm.attention(kv, qc, nHeads, s, oc);
        expect(bitsEqual(oc, once.slice(p * qDim, (p + c) * qDim)), `chunks of ${chunk} at ${p}`).toBe(true);
      }
    }
  });

  it("the block size does not change a bit: four keys at a time score exactly as one at a time", () => {
    // Blocks of 16 score keys four at a time, blocks of 3 one at a time; the same K/V laid out both
    // ways must give the same bits.
    const rng = new Rng(11);
    const nHeads = 6;
    const nKVHeads = 3;
    const headDim = 64;
    const kvDim = nKVHeads * headDim;
    const qDim = nHeads * headDim;
    const lens = [
      { pos: 0, count: 29 },
      { pos: 50, count: 1 },
    ];
    const tokens = lens.map((l) => l.pos + l.count);
    const k = inWasm(randoms(rng, (tokens[0]! + tokens[1]!) * kvDim));
    const v = inWasm(randoms(rng, (tokens[0]! + tokens[1]!) * kvDim));
    const q = inWasm(randoms(rng, 30 * qDim));
    const outs = [16, 3].map((blockSize) => {
      const need = tokens.map((t) => Math.ceil(t / blockSize));
      const tables = scatteredTables(rng, need[0]! + need[1]!, need);
      const kv = pools(rng, need[0]! + need[1]!, blockSize, nKVHeads, headDim, true);
      wasm.storeKV(kv, k, v, [
        { row: 0, count: tokens[0]!, pos: 0, blockTable: tables[0]! },
        { row: tokens[0]!, count: tokens[1]!, pos: 0, blockTable: tables[1]! },
      ]);
      const out = wasm.allocFloat32(30 * qDim)!;
      wasm.attention(
        kv,
        q,
        nHeads,
        [
          { row: 0, count: 29, pos: 0, blockTable: tables[0]! },
          { row: 29, count: 1, pos: 50, blockTable: tables[1]! },
        ],
        out,
      );
      return out;
    });
    expect(bitsEqual(outs[0]!, outs[1]!)).toBe(true);
  });

  it("split over 2 threads gives the bits of 1 thread: a long prefill, many decodes, both at once", async () => {
    const two = await createWasmKernels({ threads: 2 });
    const one = await createWasmKernels({ threads: 1 });
    two.smallSplits = true;
    const rng = new Rng(12);
    const nHeads = 8;
    const nKVHeads = 2;
    const headDim = 64;
    const blockSize = 16;
    const qDim = nHeads * headDim;
    const batches = [
      [{ pos: 0, count: 70 }],
      Array.from({ length: 12 }, (_, i) => ({ pos: 20 + 9 * i, count: 1 })),
      [{ pos: 33, count: 40 }, ...Array.from({ length: 5 }, (_, i) => ({ pos: 100 + i, count: 1 }))],
    ];
    for (const lens of batches) {
      const need = lens.map((l) => Math.ceil((l.pos + l.count) / blockSize));
      const numBlocks = need.reduce((a, b) => a + b, 0);
      const tables = scatteredTables(rng, numBlocks, need);
      const n = lens.reduce((a, l) => a + l.count, 0);
      const kvValues = randoms(rng, numBlocks * blockSize * nKVHeads * headDim * 2);
      const qValues = randoms(rng, n * qDim);
      const seqs: AttentionSeq[] = [];
      let row = 0;
      lens.forEach((l, i) => {
        seqs.push({ row, count: l.count, pos: l.pos, blockTable: tables[i]! });
        row += l.count;
      });
      const [a, b] = [two, one].map((k) => {
        const half = kvValues.length / 2;
        const kv: PagedKV = {
          blockSize,
          nKVHeads,
          headDim,
          k: k.allocFloat32(half)!,
          v: k.allocFloat32(half)!,
        };
        kv.k.set(kvValues.subarray(0, half));
        kv.v.set(kvValues.subarray(half));
        const q = k.allocFloat32(n * qDim)!;
        q.set(qValues);
        const out = k.allocFloat32(n * qDim)!;
        k.attention(kv, q, nHeads, seqs, out);
        const plain = Float32Array.from(out);
        // Gemma's sliding window and soft-cap: the split weighs each query by the keys it sees.
        k.attention(kv, q, nHeads, seqs, out, { window: 24, softcap: 3 });
        return [plain, Float32Array.from(out)];
      });
      expect(bitsEqual(a![0]!, b![0]!), `${lens.length} sequences`).toBe(true);
      expect(bitsEqual(a![1]!, b![1]!), `${lens.length} sequences, window and soft-cap`).toBe(true);
    }
  });

  it("uses the reference on pools outside its memory, and rejects bad block tables", () => {
    const rng = new Rng(10);
    const kv = pools(rng, 4, 16, 2, 8, false);
    const q = randoms(rng, 3 * 32);
    const s = [{ row: 0, count: 3, pos: 10, blockTable: [2] }];
    const a = new Float32Array(96);
    const b = new Float32Array(96);
    wasm.attention(kv, q, 4, s, a);
    referenceKernels.attention(kv, q, 4, s, b);
    expect(bitsEqual(a, b)).toBe(true);
    const mine = pools(rng, 4, 16, 2, 8, true);
    const k = inWasm(randoms(rng, 3 * 16));
    expect(() => wasm.attention(mine, q, 4, [{ row: 0, count: 3, pos: 10, blockTable: [4] }], a)).toThrow(
      /outside the KV pool/,
    );
    expect(() => wasm.storeKV(mine, k, k, [{ row: 0, count: 3, pos: 15, blockTable: [1] }])).toThrow(
      /block table too short/,
    );
  });
});

describe("the kernels' memory", () => {
  it("reuses freed space, keeps views valid when it grows, and knows its own arrays", async () => {
    const k = await createWasmKernels();
    const a = k.allocFloat32(1000)!;
    a.fill(7);
    const used = k.memoryBytes();
    const b = k.allocFloat32(1000)!;
    b.fill(5);
    k.freeFloat32(b);
    const c = k.allocFloat32(900)!;
    expect(c.byteOffset).toBe(b.byteOffset); // first fit: b's range again
    expect(c.every((x) => x === 0)).toBe(true); // zeroed
    const big = k.allocFloat32(64 << 20)!; // 256 MiB: the memory grows
    expect(big.length).toBe(64 << 20);
    expect(a[999]).toBe(7); // old views still see the memory
    a[0] = 3;
    expect(k.owns(a) && k.owns(big) && !k.owns(new Float32Array(4))).toBe(true);
    k.freeFloat32(big);
    k.freeFloat32(c);
    expect(k.memoryBytes()).toBe(used);
  });

  it("KVCacheStorage (f32) puts its pools in the kernels' memory and gives them back", async () => {
    const k = await createWasmKernels();
    const config = { nLayers: 3, nKVHeads: 2, headDim: 8 };
    const before = k.memoryBytes();
    const kv = new KVCacheStorage(config, 5, 16, undefined, "f32");
    // Plain arrays until kernels are named; then moved, contents included.
    kv.layers[1]!.k[3] = 42;
    expect(k.owns(kv.layers[0]!.k)).toBe(false);
    kv.useKernels(k);
    expect(kv.layers.every((l) => k.owns(l.k) && k.owns(l.v))).toBe(true);
    expect(kv.layers[1]!.k[3]).toBe(42);
    expect(k.memoryBytes() - before).toBeGreaterThanOrEqual(2 * 3 * 5 * 16 * 2 * 8 * 4);
    kv.dispose();
    expect(k.memoryBytes()).toBe(before);
    // Kernels without an allocator (the reference) keep plain arrays.
    const plain = new KVCacheStorage(config, 2, 16, referenceKernels as Kernels, "f32");
    expect(plain.layers[0]!.k).toBeInstanceOf(Float32Array);
    expect(k.owns(plain.layers[0]!.k)).toBe(false);
  });
});

/**
 * Attention as Gemma and Phi-3 need it (AttentionOptions): a scale other than 1/sqrt(headDim),
 * sliding windows, soft-capped scores. The oracle is written out densely here (one sequence, keys in
 * position order); the reference kernel and the WebAssembly kernel must both match it. With a window,
 * both run again on a block table whose blocks wholly before the step's first window are -1 (given
 * back, as a sliding-window pool's sequence does): they must not read them.
 */
describe("attention options: scale, sliding window, soft-cap", () => {
  function dense(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    nHeads: number,
    nKVHeads: number,
    headDim: number,
    pos: number,
    count: number,
    o: { scale?: number; window?: number; softcap?: number },
  ): Float64Array {
    const out = new Float64Array(count * nHeads * headDim);
    const scale = o.scale ?? 1 / Math.sqrt(headDim);
    for (let i = 0; i < count; i++) {
      const p = pos + i;
      for (let h = 0; h < nHeads; h++) {
        const kvh = Math.floor(h / (nHeads / nKVHeads));
        const keys: number[] = [];
        for (let j = 0; j <= p; j++) if (o.window === undefined || p - j < o.window) keys.push(j);
        const s = keys.map((j) => {
          let d = 0;
          for (let e = 0; e < headDim; e++)
            d += q[(i * nHeads + h) * headDim + e]! * k[(j * nKVHeads + kvh) * headDim + e]!;
          d *= scale;
          return o.softcap === undefined ? d : o.softcap * Math.tanh(d / o.softcap);
        });
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const z = e.reduce((a, b) => a + b, 0);
        keys.forEach((j, t) => {
          for (let d = 0; d < headDim; d++)
            out[(i * nHeads + h) * headDim + d]! += (e[t]! / z) * v[(j * nKVHeads + kvh) * headDim + d]!;
        });
      }
    }
    return out;
  }

  const options = [
    { scale: 0.05 },
    { window: 5 },
    { window: 40 }, // wider than every context here
    { softcap: 1.5, scale: 0.3 },
    { window: 7, softcap: 2 },
  ];
  for (const o of options) {
    it(JSON.stringify(o), () => {
      const rng = new Rng(17);
      const [nHeads, nKVHeads, headDim, blockSize] = [4, 2, 8, 4];
      const kvDim = nKVHeads * headDim;
      const total = 19;
      const numBlocks = Math.ceil(total / blockSize);
      const table = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i); // scattered
      const kv = pools(rng, numBlocks, blockSize, nKVHeads, headDim, true);
      const k = inWasm(randoms(rng, total * kvDim, 2));
      const v = inWasm(randoms(rng, total * kvDim));
      wasm.storeKV(kv, k, v, [{ row: 0, count: total, pos: 0, blockTable: table }]);
      // A prefill of 12 after 7 cached tokens, then a decode step at 18, as separate calls.
      for (const [pos, count] of [
        [7, 12],
        [18, 1],
      ] as const) {
        const q = inWasm(randoms(rng, count * nHeads * headDim, 2));
        const want = dense(q, k, v, nHeads, nKVHeads, headDim, pos, count, o);
        const seqs = [{ row: 0, count, pos, blockTable: table }];
        const ref = new Float32Array(count * nHeads * headDim);
        referenceKernels.attention(kv, q, nHeads, seqs, ref, o);
        expect(maxDiff(ref, want), "reference vs dense").toBeLessThan(1e-5);
        const out = wasm.allocFloat32(count * nHeads * headDim)!;
        wasm.attention(kv, q, nHeads, seqs, out, o);
        expect(maxDiff(out, want), "wasm vs dense").toBeLessThan(1e-5);
        if (o.window === undefined) continue;
        const unread = Math.floor(Math.max(0, pos + 1 - o.window) / blockSize);
        const holed = [{ row: 0, count, pos, blockTable: table.map((b, i) => (i < unread ? -1 : b)) }];
        const refHoled = new Float32Array(count * nHeads * headDim);
        referenceKernels.attention(kv, q, nHeads, holed, refHoled, o);
        expect(maxDiff(refHoled, want), "reference, blocks before the window given back").toBeLessThan(1e-5);
        out.fill(Number.NaN);
        wasm.attention(kv, q, nHeads, holed, out, o);
        expect(maxDiff(out, want), "wasm, blocks before the window given back").toBeLessThan(1e-5);
      }
    });
  }

  it("geglu is tanh-GELU(gate) · up; softcap and scale", () => {
    const rng = new Rng(3);
    const g = inWasm(randoms(rng, 64, 6));
    const u = inWasm(randoms(rng, 64));
    const out = wasm.allocFloat32(64)!;
    wasm.geglu(g, u, 64, out);
    for (let i = 0; i < 64; i++) {
      const x = g[i]!;
      const gelu = 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
      expect(out[i]).toBeCloseTo(gelu * u[i]!, 5);
    }
    // Large enough to be split into parts, with a tail; gates far out in both directions.
    const n = 20_003;
    const gb = inWasm(randoms(rng, n, 40));
    const ub = inWasm(randoms(rng, n));
    const ob = wasm.allocFloat32(n)!;
    wasm.geglu(gb, ub, n, ob);
    for (let i = 0; i < n; i++) {
      const want = geluTanh(gb[i]!) * ub[i]!;
      expect(Math.abs(ob[i]! - want), `${i}`).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(want)));
    }
    const c = Float32Array.from(g);
    wasm.softcap(c, 64, 2);
    for (let i = 0; i < 64; i++) expect(c[i]).toBeCloseTo(2 * Math.tanh(g[i]! / 2), 6);
    wasm.scale(c, 64, -3);
    for (let i = 0; i < 64; i++) expect(c[i]).toBeCloseTo(-6 * Math.tanh(g[i]! / 2), 5);
  });
});
