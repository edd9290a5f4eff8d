/**
 * GGML tensor types and GGUF metadata value types, as numbered in llama.cpp's ggml.
 * Only the numbering and block geometry live here; the codecs are in src/quant.
 */
export enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
}

/** Elements per block and bytes per block, for every type a GGUF file may name. */
export const TYPE_GEOMETRY: Readonly<Record<number, { blockSize: number; typeSize: number }>> = {
  [GGMLType.F32]: { blockSize: 1, typeSize: 4 },
  [GGMLType.F16]: { blockSize: 1, typeSize: 2 },
  [GGMLType.BF16]: { blockSize: 1, typeSize: 2 },
  [GGMLType.Q4_0]: { blockSize: 32, typeSize: 18 },
  [GGMLType.Q4_1]: { blockSize: 32, typeSize: 20 },
  [GGMLType.Q5_0]: { blockSize: 32, typeSize: 22 },
  [GGMLType.Q5_1]: { blockSize: 32, typeSize: 24 },
  [GGMLType.Q8_0]: { blockSize: 32, typeSize: 34 },
  [GGMLType.Q8_1]: { blockSize: 32, typeSize: 36 },
  [GGMLType.Q2_K]: { blockSize: 256, typeSize: 84 },
  [GGMLType.Q3_K]: { blockSize: 256, typeSize: 110 },
  [GGMLType.Q4_K]: { blockSize: 256, typeSize: 144 },
  [GGMLType.Q5_K]: { blockSize: 256, typeSize: 176 },
  [GGMLType.Q6_K]: { blockSize: 256, typeSize: 210 },
  [GGMLType.Q8_K]: { blockSize: 256, typeSize: 292 },
  [GGMLType.IQ2_XXS]: { blockSize: 256, typeSize: 66 },
  [GGMLType.IQ2_XS]: { blockSize: 256, typeSize: 74 },
  [GGMLType.IQ3_XXS]: { blockSize: 256, typeSize: 98 },
  [GGMLType.IQ1_S]: { blockSize: 256, typeSize: 50 },
  [GGMLType.IQ4_NL]: { blockSize: 32, typeSize: 18 },
  [GGMLType.IQ3_S]: { blockSize: 256, typeSize: 110 },
  [GGMLType.IQ2_S]: { blockSize: 256, typeSize: 82 },
  [GGMLType.IQ4_XS]: { blockSize: 256, typeSize: 136 },
  [GGMLType.I8]: { blockSize: 1, typeSize: 1 },
  [GGMLType.I16]: { blockSize: 1, typeSize: 2 },
  [GGMLType.I32]: { blockSize: 1, typeSize: 4 },
  [GGMLType.I64]: { blockSize: 1, typeSize: 8 },
  [GGMLType.F64]: { blockSize: 1, typeSize: 8 },
  [GGMLType.IQ1_M]: { blockSize: 256, typeSize: 56 },
  [GGMLType.TQ1_0]: { blockSize: 256, typeSize: 54 },
  [GGMLType.TQ2_0]: { blockSize: 256, typeSize: 66 },
  [GGMLType.MXFP4]: { blockSize: 32, typeSize: 17 },
};

/** Weight types Spindle can compute with (dequantize and multiply). */
export const SUPPORTED_WEIGHT_TYPES: readonly GGMLType[] = [
  GGMLType.F32,
  GGMLType.F16,
  GGMLType.BF16,
  GGMLType.Q8_0,
  GGMLType.Q4_0,
  GGMLType.Q4_1,
  GGMLType.Q5_0,
  GGMLType.Q5_1,
  GGMLType.Q4_K,
  GGMLType.Q5_K,
  GGMLType.Q6_K,
  GGMLType.Q2_K,
  GGMLType.Q3_K,
  GGMLType.IQ4_NL,
  GGMLType.IQ4_XS,
];

export function typeName(type: number): string {
  return GGMLType[type] ?? `unknown type ${type}`;
}

/** Bytes taken by `n` elements of `type` (n must be a multiple of the block size). */
export function bytesFor(type: GGMLType, n: number): number {
  const g = TYPE_GEOMETRY[type];
  if (!g) throw new Error(`no geometry for ${typeName(type)}`);
  return (n / g.blockSize) * g.typeSize;
}

/** GGUF metadata value types. */
export enum GGUFValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}
