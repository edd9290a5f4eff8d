import { describe, expect, it } from "vitest";
import { GGMLType, TYPE_GEOMETRY } from "../../src/gguf/types.js";

/**
 * Block sizes and bytes per block, derived field by field from the block
 * structs in ggml's ggml-common.h (QK_K = 256, f16 = 2 bytes, no padding: ggml
 * static_asserts every struct's size against the same sums).
 */
const QK_K = 256;
const F16 = 2;
const EXPECTED: Record<string, [blockSize: number, bytes: number]> = {
  F32: [1, 4],
  F16: [1, 2],
  BF16: [1, 2],
  I8: [1, 1],
  I16: [1, 2],
  I32: [1, 4],
  I64: [1, 8],
  F64: [1, 8],
  Q4_0: [32, F16 + 32 / 2],
  Q4_1: [32, 2 * F16 + 32 / 2],
  Q5_0: [32, F16 + 4 + 32 / 2],
  Q5_1: [32, 2 * F16 + 4 + 32 / 2],
  Q8_0: [32, F16 + 32],
  Q8_1: [32, 2 * F16 + 32],
  Q2_K: [QK_K, QK_K / 16 + QK_K / 4 + 2 * F16], // scales, qs, d, dmin
  Q3_K: [QK_K, QK_K / 8 + QK_K / 4 + 12 + F16], // hmask, qs, scales, d
  Q4_K: [QK_K, 2 * F16 + 12 + QK_K / 2],
  Q5_K: [QK_K, 2 * F16 + 12 + QK_K / 8 + QK_K / 2],
  Q6_K: [QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + F16], // ql, qh, scales, d
  Q8_K: [QK_K, 4 + QK_K + (QK_K / 16) * 2], // f32 d, qs, i16 bsums
  IQ2_XXS: [QK_K, F16 + (QK_K / 8) * 2], // d, u16 qs
  IQ2_XS: [QK_K, F16 + (QK_K / 8) * 2 + QK_K / 32], // d, u16 qs, scales
  IQ2_S: [QK_K, F16 + QK_K / 4 + QK_K / 32 + QK_K / 32], // d, qs, qh, scales
  IQ3_XXS: [QK_K, F16 + (3 * QK_K) / 8],
  IQ3_S: [QK_K, F16 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64], // d, qs, qh, signs, scales
  IQ1_S: [QK_K, F16 + QK_K / 8 + (QK_K / 32) * 2], // d, qs, u16 qh
  IQ1_M: [QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32], // qs, qh, scales (no d field)
  IQ4_NL: [32, F16 + 32 / 2],
  IQ4_XS: [QK_K, F16 + 2 + QK_K / 64 + QK_K / 2], // d, u16 scales_h, scales_l, qs
  TQ1_0: [QK_K, (QK_K - (4 * QK_K) / 64) / 5 + QK_K / 64 + F16], // base-3 qs, qh, d
  TQ2_0: [QK_K, QK_K / 4 + F16],
  MXFP4: [32, 1 + 32 / 2], // e8m0 exponent, nibbles
};

describe("TYPE_GEOMETRY", () => {
  it.each(Object.entries(EXPECTED))("%s matches ggml's block struct", (name, [blockSize, bytes]) => {
    const type = GGMLType[name as keyof typeof GGMLType];
    expect(TYPE_GEOMETRY[type]).toEqual({ blockSize, typeSize: bytes });
  });

  it("covers every type in the enum", () => {
    const names = Object.keys(GGMLType).filter((k) => Number.isNaN(Number(k)));
    expect(names.sort()).toEqual(Object.keys(EXPECTED).sort());
  });
});
