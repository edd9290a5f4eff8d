import { afterAll, describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType } from "../../src/gguf/types.js";
import { dequantize, dequantizeRow, dotRow, quantize, rowBytes } from "../../src/quant/index.js";
import { TINY_RANDOM, testModel } from "../helpers/models.js";
import { dot, gaussian, relRmsError } from "./data.js";

/**
 * Real bytes from a GGUF converted by llama.cpp: llama-2-tiny-random holds F16
 * weights drawn from N(0, 0.02^2) (Hugging Face's default init) and F32 norms of 1.
 */
describe("llama-2-tiny-random.gguf tensors", () => {
  const g = readGGUF(testModel(TINY_RANDOM));
  afterAll(() => g.close());

  it("token_embd.weight (F16, 8 x 32000) decodes to a plausible N(0, 0.02^2) sample", () => {
    const t = g.tensor("token_embd.weight");
    expect(t.type).toBe(GGMLType.F16);
    const bytes = g.readTensor(t.name);
    expect(bytes.length).toBe(rowBytes(t.type, t.dims[0]!) * t.dims[1]!);
    const v = dequantize(t.type, bytes, t.nElements, t.dims[0]!);
    let sum = 0;
    let sum2 = 0;
    let maxAbs = 0;
    let zeros = 0;
    let nonFinite = 0;
    for (const x of v) {
      if (!Number.isFinite(x)) nonFinite++;
      sum += x;
      sum2 += x * x;
      maxAbs = Math.max(maxAbs, Math.abs(x));
      if (x === 0) zeros++;
    }
    expect(nonFinite).toBe(0);
    const mean = sum / v.length;
    const std = Math.sqrt(sum2 / v.length - mean * mean);
    expect(std).toBeGreaterThan(0.019);
    expect(std).toBeLessThan(0.021);
    expect(Math.abs(mean)).toBeLessThan((5 * std) / Math.sqrt(v.length));
    expect(maxAbs).toBeGreaterThan(3 * std); // 256000 samples reach past 3 sigma
    expect(maxAbs).toBeLessThan(6 * std);
    expect(zeros).toBeLessThan(v.length / 1000);
    // A wrong byte order would give values like 1e-5 or 1e4, not a bell curve: check its shape.
    let inside = 0;
    for (const x of v) if (Math.abs(x - mean) < std) inside++;
    const within1 = inside / v.length;
    expect(within1).toBeGreaterThan(0.66);
    expect(within1).toBeLessThan(0.7);
  });

  it("F16 weights re-encode to the file's exact bytes, and dotRow matches per row", () => {
    for (const name of ["token_embd.weight", "blk.0.ffn_down.weight", "output.weight"]) {
      const t = g.tensor(name);
      const bytes = g.readTensor(name);
      const rowLen = t.dims[0]!;
      const v = dequantize(t.type, bytes, t.nElements, rowLen);
      const again = quantize(GGMLType.F16, v, rowLen);
      expect(Buffer.compare(again, bytes), name).toBe(0); // (toEqual is slow on 512 KB)

      const x = gaussian(rowLen, 1);
      const rb = rowBytes(t.type, rowLen);
      const row = new Float32Array(rowLen);
      for (let r = 0; r < Math.min(t.dims[1]!, 200); r++) {
        dequantizeRow(t.type, bytes, r * rb, row, 0, rowLen);
        expect(dotRow(t.type, bytes, r * rb, x, 0, rowLen)).toBeCloseTo(dot(row, x), 12);
      }
    }
  });

  it("F32 norm weights decode to exactly 1", () => {
    const t = g.tensor("blk.0.attn_norm.weight");
    expect(t.type).toBe(GGMLType.F32);
    const v = dequantize(t.type, g.readTensor(t.name), t.nElements, t.dims[0]!);
    expect(Array.from(v)).toEqual(new Array(t.nElements).fill(1));
  });

  it("real weights survive requantization into every supported type", () => {
    const t = g.tensor("output.weight");
    const rowLen = 256; // re-row the 256000 values so K-quant blocks fit
    const v = dequantize(t.type, g.readTensor(t.name), t.nElements, t.dims[0]!).subarray(0, 256 * 64);
    const bound: [GGMLType, number][] = [
      [GGMLType.BF16, 3e-3],
      [GGMLType.Q8_0, 0.0075],
      [GGMLType.Q6_K, 0.02],
      [GGMLType.Q5_1, 0.045],
      [GGMLType.Q5_K, 0.04],
      [GGMLType.Q5_0, 0.05],
      [GGMLType.Q4_K, 0.078],
      [GGMLType.Q4_1, 0.09],
      [GGMLType.Q4_0, 0.1],
    ];
    for (const [type, b] of bound) {
      const back = dequantize(type, quantize(type, v, rowLen), v.length, rowLen);
      expect(relRmsError(back, v), GGMLType[type]).toBeLessThan(b);
    }
  });
});
