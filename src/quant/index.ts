import { SpindleError } from "../errors.js";
import { type GGMLType, SUPPORTED_WEIGHT_TYPES, TYPE_GEOMETRY, typeName } from "../gguf/types.js";
import type { RowCodec } from "./codec.js";
import { BF16_CODEC, F16_CODEC, F32_CODEC } from "./float.js";
import { IQUANT_CODECS } from "./iquants.js";
import { KQUANT_CODECS } from "./kquants.js";
import { LOW_KQUANT_CODECS } from "./kquants-low.js";
import { LEGACY_CODECS } from "./legacy.js";

/**
 * ggml weight-type codecs: row-wise dequantize, quantize and fused dot product
 * for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and
 * IQ4_XS, with
 * ggml's exact byte layouts. Offsets are in bytes on the quantized side and in
 * elements on the float side.
 */

export { bf16ToF32, F16_TO_F32, f16ToF32, f32ToBF16, f32ToF16, readF16, writeF16 } from "./fp16.js";

const CODECS: (RowCodec | undefined)[] = [];
for (const c of [
  F32_CODEC,
  F16_CODEC,
  BF16_CODEC,
  ...LEGACY_CODECS,
  ...KQUANT_CODECS,
  ...LOW_KQUANT_CODECS,
  ...IQUANT_CODECS,
])
  CODECS[c.type] = c;

const SUPPORTED_NAMES = SUPPORTED_WEIGHT_TYPES.map((t) => typeName(t)).join(", ");

function unsupported(type: number): SpindleError {
  return new SpindleError(
    `tensor type ${typeName(type)} is not supported (supported: ${SUPPORTED_NAMES})`,
    "unsupported_type",
  );
}

function codecFor(type: number): RowCodec {
  const c = CODECS[type];
  if (c === undefined) throw unsupported(type);
  return c;
}

function blocksIn(type: number, n: number, blockSize: number): number {
  if (!Number.isSafeInteger(n) || n < 0 || n % blockSize !== 0) {
    throw new SpindleError(
      `a row of ${n} elements is not a whole number of ${typeName(type)} blocks of ${blockSize}`,
      "bad_row_length",
    );
  }
  return n / blockSize;
}

function checkRange(what: string, offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > size) {
    throw new RangeError(`${what}: range [${offset}, ${offset + length}) is outside its array of ${size}`);
  }
}

/** Whether Spindle can dequantize, quantize and multiply with tensors of this type. */
export function isSupportedType(type: number): boolean {
  return CODECS[type] !== undefined;
}

/**
 * Bytes taken by a row of `n` elements. Works for every type with known block
 * geometry (so unsupported tensors can still be sized); throws when `n` is not a
 * whole number of blocks or the type is unknown.
 */
export function rowBytes(type: GGMLType, n: number): number {
  const g = TYPE_GEOMETRY[type];
  if (g === undefined) throw unsupported(type);
  return blocksIn(type, n, g.blockSize) * g.typeSize;
}

/** Decodes `n` elements from byte `srcByteOffset` of `src` into `dst[dstOffset...]`. */
export function dequantizeRow(
  type: GGMLType,
  src: Uint8Array,
  srcByteOffset: number,
  dst: Float32Array,
  dstOffset: number,
  n: number,
): void {
  const c = codecFor(type);
  const nb = blocksIn(type, n, c.blockSize);
  checkRange("dequantizeRow source", srcByteOffset, nb * c.typeSize, src.length);
  checkRange("dequantizeRow destination", dstOffset, n, dst.length);
  c.dequantize(src, srcByteOffset, dst, dstOffset, nb);
}

/** Encodes `n` floats from `src[srcOffset...]` into `dst` at byte `dstByteOffset`. */
export function quantizeRow(
  type: GGMLType,
  src: Float32Array,
  srcOffset: number,
  n: number,
  dst: Uint8Array,
  dstByteOffset: number,
): void {
  const c = codecFor(type);
  const nb = blocksIn(type, n, c.blockSize);
  checkRange("quantizeRow source", srcOffset, n, src.length);
  checkRange("quantizeRow destination", dstByteOffset, nb * c.typeSize, dst.length);
  c.quantize(src, srcOffset, nb, dst, dstByteOffset);
}

/** Quantizes a whole tensor stored row-major with rows of `rowLength` elements. */
export function quantize(type: GGMLType, data: Float32Array, rowLength: number): Uint8Array {
  const c = codecFor(type);
  const nb = blocksIn(type, rowLength, c.blockSize);
  if (rowLength === 0 || data.length % rowLength !== 0) {
    throw new SpindleError(
      `${data.length} elements do not make whole rows of ${rowLength}`,
      "bad_row_length",
    );
  }
  const rows = data.length / rowLength;
  const stride = nb * c.typeSize;
  const out = new Uint8Array(rows * stride);
  for (let r = 0; r < rows; r++) c.quantize(data, r * rowLength, nb, out, r * stride);
  return out;
}

/** Dequantizes a whole tensor of `nElements` stored in rows of `rowLength` elements. */
export function dequantize(
  type: GGMLType,
  src: Uint8Array,
  nElements: number,
  rowLength: number,
): Float32Array {
  const c = codecFor(type);
  const nb = blocksIn(type, rowLength, c.blockSize);
  if (rowLength === 0 || !Number.isSafeInteger(nElements) || nElements % rowLength !== 0) {
    throw new SpindleError(`${nElements} elements do not make whole rows of ${rowLength}`, "bad_row_length");
  }
  const rows = nElements / rowLength;
  const stride = nb * c.typeSize;
  checkRange("dequantize source", 0, rows * stride, src.length);
  const out = new Float32Array(nElements);
  for (let r = 0; r < rows; r++) c.dequantize(src, r * stride, out, r * rowLength, nb);
  return out;
}

/**
 * Dot product of the `n`-element quantized row at byte `wByteOffset` of `w`
 * with `x[xOffset...]`, without decoding the row into memory.
 */
export function dotRow(
  type: GGMLType,
  w: Uint8Array,
  wByteOffset: number,
  x: Float32Array,
  xOffset: number,
  n: number,
): number {
  const c = codecFor(type);
  const nb = blocksIn(type, n, c.blockSize);
  checkRange("dotRow weights", wByteOffset, nb * c.typeSize, w.length);
  checkRange("dotRow vector", xOffset, n, x.length);
  return c.dot(w, wByteOffset, x, xOffset, nb);
}
