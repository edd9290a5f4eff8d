import { describe, expect, it } from "vitest";
import {
  bf16ToF32,
  F16_TO_F32,
  f16ToF32,
  f32ToBF16,
  f32ToF16,
  readF16,
  writeF16,
} from "../../src/quant/index.js";

const isQuietF16NaN = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x03ff) !== 0;

describe("f32 -> f16", () => {
  it.each([
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [65504, 0x7bff], // largest finite
    [0, 0x0000],
    [-0, 0x8000],
    [2 ** -14, 0x0400], // smallest normal
    [6.1e-5, 0x03ff], // just below it: subnormal 1023 * 2^-24
    [2 ** -24, 0x0001], // smallest subnormal
    [-(2 ** -24), 0x8001],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [1e6, 0x7c00], // overflow
    [-1e6, 0xfc00],
    [1e-10, 0x0000], // underflow
    [0.1, 0x2e66],
    [3.140625, 0x4248],
  ])("%s -> 0x%s", (v, h) => {
    expect(f32ToF16(v)).toBe(h);
  });

  it("rounds ties to even, in normals, subnormals and at the top of the range", () => {
    const ulp1 = 2 ** -10; // f16 spacing just above 1
    expect(f32ToF16(1 + ulp1 / 2)).toBe(0x3c00); // tie, 0x3c00 is even
    expect(f32ToF16(1 + (3 * ulp1) / 2)).toBe(0x3c02); // tie between 0x3c01 and 0x3c02
    expect(f32ToF16(1 + ulp1 / 2 + 2 ** -20)).toBe(0x3c01); // just above the tie
    expect(f32ToF16(1 + ulp1 / 2 - 2 ** -20)).toBe(0x3c00); // just below it
    expect(f32ToF16(2 ** -25)).toBe(0x0000); // half the smallest subnormal: tie to 0
    expect(f32ToF16(2 ** -25 * (1 + 2 ** -10))).toBe(0x0001);
    expect(f32ToF16(3 * 2 ** -25)).toBe(0x0002); // tie between 1 and 2 subnormal units
    expect(f32ToF16(5 * 2 ** -25)).toBe(0x0002); // tie between 2 and 3
    expect(f32ToF16(1023.5 * 2 ** -24)).toBe(0x0400); // rounds up out of the subnormals into the first normal
    expect(f32ToF16(65519.99)).toBe(0x7bff); // below the tie with 65536
    expect(f32ToF16(65520)).toBe(0x7c00); // the tie rounds to even, which is infinity
  });

  it("keeps NaN a NaN", () => {
    expect(isQuietF16NaN(f32ToF16(Number.NaN))).toBe(true);
    expect(Number.isNaN(f16ToF32(f32ToF16(Number.NaN)))).toBe(true);
  });
});

describe("f16 -> f32", () => {
  it.each([
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0x0400, 2 ** -14],
    [0x03ff, 1023 * 2 ** -24],
    [0x0001, 2 ** -24],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
    [0x3555, 0.333251953125],
  ])("0x%s -> %s", (h, v) => {
    expect(f16ToF32(h)).toBe(v);
    expect(F16_TO_F32[h]).toBe(v);
  });

  it("keeps the sign of zero and decodes NaNs", () => {
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
    expect(Number.isNaN(f16ToF32(0x7e00))).toBe(true);
    expect(Number.isNaN(f16ToF32(0xfc01))).toBe(true);
  });

  it("round-trips every non-NaN f16 bit pattern exactly", () => {
    for (let h = 0; h < 65536; h++) {
      if (isQuietF16NaN(h)) continue;
      if (f32ToF16(f16ToF32(h)) !== h) throw new Error(`0x${h.toString(16)} does not round-trip`);
    }
  });

  it("reads and writes little-endian f16 in byte arrays", () => {
    const b = new Uint8Array(5);
    expect(writeF16(b, 1, -2)).toBe(-2);
    expect([...b]).toEqual([0, 0x00, 0xc0, 0, 0]);
    expect(writeF16(b, 3, 0.1)).toBe(0.0999755859375); // returns the value actually stored
    expect(readF16(b, 1)).toBe(-2);
    expect(readF16(new Uint8Array([0x00, 0x3c]), 0)).toBe(1);
  });
});

describe("bf16", () => {
  it.each([
    [1, 0x3f80],
    [-2, 0xc000],
    [3.140625, 0x4049],
    [0, 0x0000],
    [-0, 0x8000],
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [3.3895313892515355e38, 0x7f7f], // largest finite bf16
    [3.4028234663852886e38, 0x7f80], // largest f32 rounds up to infinity
    [1e-40, 0x0001], // f32 subnormal 0x000116c2 keeps its top bits
  ])("%s <-> 0x%s", (v, h) => {
    expect(f32ToBF16(v)).toBe(h);
  });

  it("rounds ties to even", () => {
    const ulp = 2 ** -7; // bf16 spacing just above 1
    expect(f32ToBF16(1 + ulp / 2)).toBe(0x3f80);
    expect(f32ToBF16(1 + (3 * ulp) / 2)).toBe(0x3f82);
    expect(f32ToBF16(1 + ulp / 2 + 2 ** -20)).toBe(0x3f81);
    expect(f32ToBF16(-(1 + (3 * ulp) / 2))).toBe(0xbf82);
  });

  it("keeps NaN a quiet NaN and decodes exactly", () => {
    const h = f32ToBF16(Number.NaN);
    expect(h & 0x7f80).toBe(0x7f80);
    expect(h & 0x7f).not.toBe(0);
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(bf16ToF32(0xc000)).toBe(-2);
    expect(bf16ToF32(0x4049)).toBe(3.140625);
    expect(bf16ToF32(0x0001)).toBe(2 ** -133);
    expect(Number.isNaN(bf16ToF32(0x7fc0))).toBe(true);
  });

  it("round-trips every non-NaN bf16 bit pattern exactly", () => {
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0) continue;
      if (f32ToBF16(bf16ToF32(h)) !== h) throw new Error(`0x${h.toString(16)} does not round-trip`);
    }
  });
});
