import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import type { AttentionSeq, PagedKVF16, PagedKVF32 } from "../../src/kernels/kernels.js";
import { referenceKernels } from "../../src/kernels/reference.js";
import { createWasmKernels, WASM_PATH, type WasmKernels } from "../../src/kernels/wasm-kernels.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { F16_TO_F32, f32ToF16 } from "../../src/quant/index.js";
import { Rng } from "../../src/sampling/rng.js";

/**
 * The f16 KV cache (`--kv-cache-type f16`) in the WebAssembly kernels against the reference kernels:
 * storeKV rounds every f32 to the f16 that src/quant's f32ToF16 gives (F16C's and ggml's rounding:
 * ties to even, overflow to infinity, exact subnormals, NaN payloads kept), bit for bit; attention
 * over f16 pools gives exactly the bits of attention over f32 pools holding the same (widened)
 * values: finite values, f16 subnormals, infinities.
 */

const BUILD_SCRIPT = new URL("../../scripts/build-kernels.mjs", import.meta.url);
let wasm: WasmKernels;
beforeAll(async () => {
  if (!existsSync(WASM_PATH))
    execFileSync(process.execPath, [fileURLToPath(BUILD_SCRIPT)], { stdio: "inherit" });
  wasm = await createWasmKernels({ threads: 1 });
});

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const fromBits = (b: number) => {
  u32[0] = b >>> 0;
  return f32[0]!;
};

/** f32 values around every f16: each f16 value, the ties halfway to its neighbour, one f32 ulp either side of both; plus specials. */
function hardValues(): Float32Array {
  const out: number[] = [];
  for (let h = 0; h < 0x7c00; h++) {
    for (const sign of [0, 0x80000000]) {
      f32[0] = F16_TO_F32[h]!;
      const x = u32[0]!;
      f32[0] = (F16_TO_F32[h]! + F16_TO_F32[h + 1]!) / 2; // the tie (exact in f32)
      const mid = u32[0]!;
      for (const b of [x, x + 1, x - 1, mid, mid + 1, mid - 1])
        if (b >= 0) out.push(fromBits((b | sign) >>> 0));
    }
  }
  // f32 subnormals, values far past f16's range, infinities and NaNs with payloads.
  for (const b of [1, 2, 0x3ff, 0x7fffff, 0x477fe000, 0x477fefff, 0x477ff000, 0x47800000, 0x7f7fffff]) {
    out.push(fromBits(b), fromBits(b | 0x80000000));
  }
  for (const b of [0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa02000, 0xffbfffff])
    out.push(fromBits(b));
  const rng = new Rng(3);
  for (let i = 0; i < 50_000; i++) out.push(fromBits(rng.nextU32()));
  return Float32Array.from(out);
}

function inWasm(a: Float32Array): Float32Array {
  const b = wasm.allocFloat32(a.length)!;
  b.set(a);
  return b;
}

function f16Pools(
  numBlocks: number,
  blockSize: number,
  nKVHeads: number,
  headDim: number,
  mine: boolean,
): PagedKVF16 {
  const n = numBlocks * blockSize * nKVHeads * headDim;
  const u16 = (m: number) => (mine ? wasm.allocUint16(m)! : new Uint16Array(m));
  return { type: "f16", blockSize, nKVHeads, headDim, k: u16(n), v: u16(n) };
}

/** The same cache as f32 pools: each stored f16 widened. */
function widened(kv: PagedKVF16): PagedKVF32 {
  const w = (a: Uint16Array) => inWasm(Float32Array.from(a, (h) => F16_TO_F32[h]!));
  return { blockSize: kv.blockSize, nKVHeads: kv.nKVHeads, headDim: kv.headDim, k: w(kv.k), v: w(kv.v) };
}

const bitsEqual = (a: Float32Array, b: Float32Array) =>
  a.length === b.length &&
  new Uint32Array(a.buffer, a.byteOffset, a.length).every(
    (x, i) => x === new Uint32Array(b.buffer, b.byteOffset, b.length)[i],
  );

describe("f16 KV cache: storeKV", () => {
  it("rounds every value as f32ToF16 does (ties to even, overflow, subnormals, NaN payloads), bit for bit", () => {
    const values = hardValues();
    const headDim = 12; // 3 groups of 4, no tail; a second pass below has a tail
    for (const hd of [headDim, 7]) {
      const tokens = Math.ceil(values.length / hd);
      const x = new Float32Array(tokens * hd);
      x.set(values);
      const blockSize = 64;
      const numBlocks = Math.ceil(tokens / blockSize);
      const kv = f16Pools(numBlocks, blockSize, 1, hd, true);
      const seq: AttentionSeq[] = [
        { row: 0, count: tokens, pos: 0, blockTable: Array.from({ length: numBlocks }, (_, i) => i) },
      ];
      const xs = inWasm(x);
      wasm.storeKV(kv, xs, xs, seq);
      let wrong = 0;
      for (let i = 0; i < x.length; i++) if (kv.k[i] !== f32ToF16(x[i]!) || kv.v[i] !== kv.k[i]) wrong++;
      expect(wrong, `headDim ${hd}`).toBe(0);
      // The reference stores the same bits.
      const ref = f16Pools(numBlocks, blockSize, 1, hd, false);
      referenceKernels.storeKV(ref, x, x, seq);
      let differ = 0;
      for (let i = 0; i < x.length; i++) if (ref.k[i] !== kv.k[i]) differ++;
      expect(differ).toBe(0);
    }
  }, 300_000);
});

describe("f16 KV cache: attention", () => {
  const shapes = [
    { nHeads: 8, nKVHeads: 2, headDim: 64, blockSize: 16 },
    { nHeads: 6, nKVHeads: 6, headDim: 48, blockSize: 16 }, // 48 = 32 + 16
    { nHeads: 4, nKVHeads: 1, headDim: 40, blockSize: 5 }, // 40 = 32 + 8; keys not in fours
    { nHeads: 2, nKVHeads: 2, headDim: 6, blockSize: 4 }, // not a multiple of 4: keys one at a time, a tail
  ];
  for (const sh of shapes) {
    it(`${sh.nHeads}/${sh.nKVHeads} heads of ${sh.headDim}, blocks of ${sh.blockSize}: the f32 kernel's bits on the widened cache`, () => {
      const rng = new Rng(sh.headDim + sh.blockSize);
      const { nHeads, nKVHeads, headDim, blockSize } = sh;
      const kvDim = nKVHeads * headDim;
      const lens = [
        { pos: 0, count: 23 },
        { pos: 37, count: 1 },
        { pos: 5, count: 11 },
      ];
      const need = lens.map((l) => Math.ceil((l.pos + l.count) / blockSize));
      const numBlocks = need.reduce((a, b) => a + b, 0);
      // Scattered tables: block ids in reverse.
      let next = numBlocks;
      const tables = need.map((n) => Array.from({ length: n }, () => --next));
      const kv = f16Pools(numBlocks, blockSize, nKVHeads, headDim, true);
      const ref = f16Pools(numBlocks, blockSize, nKVHeads, headDim, false);
      const all: AttentionSeq[] = [];
      let rows = 0;
      lens.forEach((l, i) => {
        all.push({ row: rows, count: l.pos + l.count, pos: 0, blockTable: tables[i]! });
        rows += l.pos + l.count;
      });
      const values = (n: number) => {
        const a = new Float32Array(n);
        for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * 3;
        // Some f16 subnormals and zeros: the fast path reads them exactly too.
        for (let i = 0; i < n; i += 97) a[i] = (rng.next() - 0.5) * 1e-5;
        for (let i = 5; i < n; i += 101) a[i] = 0;
        return inWasm(a);
      };
      const k = values(rows * kvDim);
      const v = values(rows * kvDim);
      wasm.storeKV(kv, k, v, all);
      referenceKernels.storeKV(ref, k, v, all);
      expect(kv.k).toEqual(ref.k);
      const seqs: AttentionSeq[] = [];
      let n = 0;
      lens.forEach((l, i) => {
        seqs.push({ row: n, count: l.count, pos: l.pos, blockTable: tables[i]! });
        n += l.count;
      });
      const q = values(n * nHeads * headDim);
      const out = wasm.allocFloat32(n * nHeads * headDim)!;
      const want = wasm.allocFloat32(n * nHeads * headDim)!;
      const refOut = new Float32Array(n * nHeads * headDim);
      wasm.attention(kv, q, nHeads, seqs, out);
      wasm.attention(widened(kv), q, nHeads, seqs, want);
      referenceKernels.attention(ref, q, nHeads, seqs, refOut);
      expect(bitsEqual(out, want)).toBe(true);
      let d = 0;
      for (let i = 0; i < out.length; i++) d = Math.max(d, Math.abs(out[i]! - refOut[i]!));
      expect(d).toBeLessThan(1e-5);
      // The reference over f16 pools is the reference over the widened pools.
      const refWide = new Float32Array(refOut.length);
      referenceKernels.attention(widened(ref), q, nHeads, seqs, refWide);
      expect(bitsEqual(refOut, refWide)).toBe(true);
    });
  }

  it("an infinity in a value row is read exactly: what the f32 cache gives", () => {
    const nHeads = 4;
    const nKVHeads = 2;
    const headDim = 32;
    const blockSize = 8;
    const kvDim = nKVHeads * headDim;
    const kv = f16Pools(4, blockSize, nKVHeads, headDim, true);
    const rng = new Rng(9);
    const rows = 20;
    const k = inWasm(Float32Array.from({ length: rows * kvDim }, () => rng.next() - 0.5));
    const v = inWasm(Float32Array.from({ length: rows * kvDim }, () => rng.next() - 0.5));
    v[9 * kvDim + 3] = 1e6; // token 9, block 1: infinity in f16
    const table = [3, 1, 0];
    wasm.storeKV(kv, k, v, [{ row: 0, count: rows, pos: 0, blockTable: table }]);
    const q = inWasm(Float32Array.from({ length: nHeads * headDim }, () => rng.next() - 0.5));
    const seqs = [{ row: 0, count: 1, pos: rows - 1, blockTable: table }];
    const out = wasm.allocFloat32(nHeads * headDim)!;
    const want = wasm.allocFloat32(nHeads * headDim)!;
    wasm.attention(kv, q, nHeads, seqs, out);
    wasm.attention(widened(kv), q, nHeads, seqs, want);
    expect(bitsEqual(out, want)).toBe(true);
    expect(out[3]).toBe(Infinity); // heads 0 and 1 read KV head 0, whose dimension 3 holds the infinity
    expect(Number.isFinite(out[4])).toBe(true);
  });

  it("KVCacheStorage f16: half the bytes of f32, pools in the kernels' memory, moved, given back", async () => {
    const k = await createWasmKernels({ threads: 1 });
    const config = { nLayers: 2, nKVHeads: 2, headDim: 8 };
    expect(KVCacheStorage.bytesPerToken(config, "f16") * 2).toBe(KVCacheStorage.bytesPerToken(config, "f32"));
    expect(KVCacheStorage.blocksForBudget(config, 1 << 20, 16, "f16")).toBe(
      2 * KVCacheStorage.blocksForBudget(config, 1 << 20, 16, "f32"),
    );
    const before = k.memoryBytes();
    const kv = new KVCacheStorage(config, 5, 16, undefined, "f16");
    const l = kv.layers[1]!;
    if (l.type !== "f16") throw new Error("not f16");
    l.k[3] = 0x3c00;
    kv.useKernels(k);
    const m = kv.layers[1]!;
    if (m.type !== "f16") throw new Error("not f16");
    expect(k.owns(m.k) && k.owns(m.v)).toBe(true);
    expect(m.k[3]).toBe(0x3c00);
    expect(kv.bytes).toBe(5 * 16 * KVCacheStorage.bytesPerToken(config, "f16"));
    kv.dispose();
    expect(k.memoryBytes()).toBe(before);
    await k.close?.();
  });
});
