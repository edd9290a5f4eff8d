import { closeSync, openSync, renameSync, writeSync } from "node:fs";
import type { GGUFMetaValue } from "./reader.js";
import { DEFAULT_ALIGNMENT, GGUF_MAGIC } from "./reader.js";
import { type GGMLType, GGUFValueType, TYPE_GEOMETRY, typeName } from "./types.js";

/**
 * GGUF writer (version 3). Takes metadata in the reader's typed form and
 * tensors as raw bytes already in their ggml type (see src/quant for the
 * quantizers), and writes header, metadata, tensor infos, then aligned data.
 * The file is written to `<path>.tmp` and renamed, so a reader never sees half a file.
 */

export interface TensorToWrite {
  name: string;
  /** ggml order: dims[0] is the row length. */
  dims: number[];
  type: GGMLType;
  data: Uint8Array;
}

/** Shorthands for building metadata values. */
export const meta = {
  str: (value: string): GGUFMetaValue => ({ type: GGUFValueType.STRING, value }),
  u32: (value: number): GGUFMetaValue => ({ type: GGUFValueType.UINT32, value }),
  i32: (value: number): GGUFMetaValue => ({ type: GGUFValueType.INT32, value }),
  f32: (value: number): GGUFMetaValue => ({ type: GGUFValueType.FLOAT32, value }),
  bool: (value: boolean): GGUFMetaValue => ({ type: GGUFValueType.BOOL, value }),
  strings: (value: string[]): GGUFMetaValue => ({
    type: GGUFValueType.ARRAY,
    itemType: GGUFValueType.STRING,
    value,
  }),
  f32s: (value: Float32Array): GGUFMetaValue => ({
    type: GGUFValueType.ARRAY,
    itemType: GGUFValueType.FLOAT32,
    value,
  }),
  i32s: (value: Int32Array): GGUFMetaValue => ({
    type: GGUFValueType.ARRAY,
    itemType: GGUFValueType.INT32,
    value,
  }),
};

class Out {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.push(b);
  }
  u64(v: number | bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  string(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.push(bytes);
  }
  take(): Buffer[] {
    return this.chunks;
  }
}

function scalarBytes(type: GGUFValueType, v: unknown): Buffer {
  const b = Buffer.alloc(8);
  switch (type) {
    case GGUFValueType.UINT8:
      return b.subarray(0, b.writeUInt8(Number(v)));
    case GGUFValueType.INT8:
      return b.subarray(0, b.writeInt8(Number(v)));
    case GGUFValueType.UINT16:
      return b.subarray(0, b.writeUInt16LE(Number(v)));
    case GGUFValueType.INT16:
      return b.subarray(0, b.writeInt16LE(Number(v)));
    case GGUFValueType.UINT32:
      return b.subarray(0, b.writeUInt32LE(Number(v)));
    case GGUFValueType.INT32:
      return b.subarray(0, b.writeInt32LE(Number(v)));
    case GGUFValueType.FLOAT32:
      return b.subarray(0, b.writeFloatLE(Number(v)));
    case GGUFValueType.BOOL:
      return b.subarray(0, b.writeUInt8(v ? 1 : 0));
    case GGUFValueType.UINT64:
      return b.subarray(0, b.writeBigUInt64LE(BigInt(v as number | bigint)));
    case GGUFValueType.INT64:
      return b.subarray(0, b.writeBigInt64LE(BigInt(v as number | bigint)));
    case GGUFValueType.FLOAT64:
      return b.subarray(0, b.writeDoubleLE(Number(v)));
    default:
      throw new Error(`cannot write GGUF value type ${type}`);
  }
}

function scalar(out: Out, type: GGUFValueType, v: unknown): void {
  if (type === GGUFValueType.STRING) out.string(String(v));
  else out.push(scalarBytes(type, v));
}

function value(out: Out, m: GGUFMetaValue): void {
  if (m.type !== GGUFValueType.ARRAY) {
    scalar(out, m.type, m.value);
    return;
  }
  out.u32(m.itemType);
  const items = m.value as ArrayLike<unknown>;
  out.u64(items.length);
  if (ArrayBuffer.isView(items)) {
    // Typed arrays are little-endian on every platform Node runs on.
    const view = items as unknown as ArrayBufferView;
    out.push(Buffer.from(view.buffer, view.byteOffset, view.byteLength));
    return;
  }
  for (let i = 0; i < items.length; i++) {
    const item = items[i];
    if (m.itemType === GGUFValueType.ARRAY) {
      const nested = item as GGUFMetaValue;
      value(out, nested);
    } else {
      scalar(out, m.itemType, item);
    }
  }
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/** Writes a GGUF v3 file. Metadata order is kept as given. */
export function writeGGUF(
  path: string,
  metadata: Map<string, GGUFMetaValue> | [string, GGUFMetaValue][],
  tensors: TensorToWrite[],
  alignment = DEFAULT_ALIGNMENT,
): void {
  const entries = [...(metadata instanceof Map ? metadata.entries() : metadata)].filter(
    ([k]) => k !== "general.alignment",
  );
  if (alignment !== DEFAULT_ALIGNMENT) entries.push(["general.alignment", meta.u32(alignment)]);
  const head = new Out();
  head.u32(GGUF_MAGIC);
  head.u32(3);
  head.u64(tensors.length);
  head.u64(entries.length);
  for (const [k, v] of entries) {
    head.string(k);
    head.u32(v.type);
    value(head, v);
  }
  let rel = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    const g = TYPE_GEOMETRY[t.type];
    if (!g) throw new Error(`cannot write tensor ${t.name} of type ${typeName(t.type)}`);
    const n = t.dims.reduce((a, b) => a * b, 1);
    const expected = (n / g.blockSize) * g.typeSize;
    if (t.data.byteLength !== expected) {
      throw new Error(
        `tensor ${t.name}: ${t.data.byteLength} bytes given, ${typeName(t.type)} ${t.dims} needs ${expected}`,
      );
    }
    head.string(t.name);
    head.u32(t.dims.length);
    for (const d of t.dims) head.u64(d);
    head.u32(t.type);
    head.u64(rel);
    offsets.push(rel);
    rel = align(rel + t.data.byteLength, alignment);
  }
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w");
  try {
    let pos = 0;
    for (const b of head.take()) pos += writeSync(fd, b);
    const dataStart = align(pos, alignment);
    if (dataStart > pos) pos += writeSync(fd, Buffer.alloc(dataStart - pos));
    tensors.forEach((t, i) => {
      const at = dataStart + offsets[i]!;
      if (at > pos) pos += writeSync(fd, Buffer.alloc(at - pos));
      let done = 0;
      while (done < t.data.byteLength) done += writeSync(fd, t.data, done, t.data.byteLength - done);
      pos += done;
    });
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Copies a GGUF file's metadata, changing or adding some keys (e.g. `tokenizer.ggml.pre`). */
export function withMetadata(
  source: Map<string, GGUFMetaValue>,
  changes: Record<string, GGUFMetaValue | undefined>,
): Map<string, GGUFMetaValue> {
  const out = new Map(source);
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined) out.delete(k);
    else out.set(k, v);
  }
  return out;
}
