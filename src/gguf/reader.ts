import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { ModelFileError } from "../errors.js";
import { type GGMLType, GGUFValueType, TYPE_GEOMETRY, typeName } from "./types.js";

/**
 * GGUF reader. Parses the header, metadata and tensor infos with small reads,
 * and reads tensor bytes on demand, straight into a destination the caller
 * owns (so weights can later land in shared or WebAssembly memory without an
 * extra copy). Every problem with the file is a ModelFileError: one line that
 * names the file and what is wrong.
 *
 * Layout (little-endian): magic "GGUF", u32 version (2 or 3), u64 tensor count,
 * u64 metadata count, metadata key/values, tensor infos (name, n_dims, dims,
 * type, offset), padding to `general.alignment` (default 32), tensor data.
 */

export type GGUFScalar = number | bigint | boolean | string;
export type GGUFArrayValue =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[]
  | GGUFMetaValue[];

/** A metadata value with its GGUF type, so a writer can write it back unchanged. */
export type GGUFMetaValue =
  | { type: Exclude<GGUFValueType, GGUFValueType.ARRAY>; value: GGUFScalar }
  | { type: GGUFValueType.ARRAY; itemType: GGUFValueType; value: GGUFArrayValue };

export interface GGUFTensorInfo {
  name: string;
  /** Dimensions in ggml order: dims[0] is the contiguous (row) length. */
  dims: number[];
  type: GGMLType;
  /** Absolute offset of the tensor's bytes in the file. */
  offset: number;
  nbytes: number;
  nElements: number;
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as little-endian u32
export const DEFAULT_ALIGNMENT = 32;
const MAX_STRING = 1 << 30;

class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly file: string,
  ) {}

  private ensure(n: number, what: string): void {
    if (this.pos + n > this.size) {
      throw new ModelFileError(
        this.file,
        `truncated file: ${what} runs past the end of the file at byte ${this.pos}`,
      );
    }
    const end = this.bufStart + this.buf.length;
    if (this.pos >= this.bufStart && this.pos + n <= end) return;
    const want = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
    this.buf = Buffer.allocUnsafe(want);
    const got = readSync(this.fd, this.buf, 0, want, this.pos);
    if (got < n) throw new ModelFileError(this.file, `truncated file: could not read ${what}`);
    this.bufStart = this.pos;
  }

  private at(n: number, what: string): number {
    this.ensure(n, what);
    const o = this.pos - this.bufStart;
    this.pos += n;
    return o;
  }

  u8(what = "u8"): number {
    const o = this.at(1, what);
    return this.buf.readUInt8(o);
  }
  i8(what = "i8"): number {
    const o = this.at(1, what);
    return this.buf.readInt8(o);
  }
  u16(what = "u16"): number {
    const o = this.at(2, what);
    return this.buf.readUInt16LE(o);
  }
  i16(what = "i16"): number {
    const o = this.at(2, what);
    return this.buf.readInt16LE(o);
  }
  u32(what = "u32"): number {
    const o = this.at(4, what);
    return this.buf.readUInt32LE(o);
  }
  i32(what = "i32"): number {
    const o = this.at(4, what);
    return this.buf.readInt32LE(o);
  }
  f32(what = "f32"): number {
    const o = this.at(4, what);
    return this.buf.readFloatLE(o);
  }
  f64(what = "f64"): number {
    const o = this.at(8, what);
    return this.buf.readDoubleLE(o);
  }
  u64(what = "u64"): bigint {
    const o = this.at(8, what);
    return this.buf.readBigUInt64LE(o);
  }
  i64(what = "i64"): bigint {
    const o = this.at(8, what);
    return this.buf.readBigInt64LE(o);
  }
  /** A u64 that must fit a JS number (counts, sizes, offsets). */
  count(what: string, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.u64(what);
    if (v > BigInt(max))
      throw new ModelFileError(this.file, `corrupt file: ${what} is ${v}, which is not plausible`);
    return Number(v);
  }
  bytes(n: number, what: string): Buffer {
    if (n > this.size - this.pos) {
      throw new ModelFileError(this.file, `truncated file: ${what} runs past the end of the file`);
    }
    const o = this.at(n, what);
    return this.buf.subarray(o, o + n);
  }
  string(what: string): string {
    const len = this.count(`length of ${what}`, MAX_STRING);
    if (len > this.size - this.pos) {
      throw new ModelFileError(
        this.file,
        `truncated file: ${what} (${len} bytes) runs past the end of the file`,
      );
    }
    return this.bytes(len, what).toString("utf8");
  }
}

export class GGUFFile {
  private fd: number | undefined;

  constructor(
    readonly path: string,
    readonly version: number,
    readonly metadata: Map<string, GGUFMetaValue>,
    readonly tensors: Map<string, GGUFTensorInfo>,
    readonly alignment: number,
    readonly dataOffset: number,
    readonly fileSize: number,
  ) {}

  /** The value of a metadata key, or undefined. Arrays come back as typed arrays or JS arrays. */
  get(key: string): GGUFScalar | GGUFArrayValue | undefined {
    return this.metadata.get(key)?.value;
  }

  has(key: string): boolean {
    return this.metadata.has(key);
  }

  getString(key: string): string;
  getString(key: string, fallback: string): string;
  getString(key: string, fallback?: string): string {
    const v = this.get(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new ModelFileError(this.path, `missing metadata key ${key}`);
    }
    if (typeof v !== "string") throw new ModelFileError(this.path, `metadata key ${key} is not a string`);
    return v;
  }

  getNumber(key: string): number;
  getNumber(key: string, fallback: number): number;
  getNumber(key: string, fallback?: number): number {
    const v = this.get(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new ModelFileError(this.path, `missing metadata key ${key}`);
    }
    if (typeof v === "number") return v;
    if (typeof v === "bigint") return Number(v);
    throw new ModelFileError(this.path, `metadata key ${key} is not a number`);
  }

  getBool(key: string, fallback: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return fallback;
    if (typeof v === "boolean") return v;
    if (typeof v === "number") return v !== 0;
    throw new ModelFileError(this.path, `metadata key ${key} is not a boolean`);
  }

  getArray(key: string): GGUFArrayValue | undefined {
    const m = this.metadata.get(key);
    if (m === undefined) return undefined;
    if (m.type !== GGUFValueType.ARRAY)
      throw new ModelFileError(this.path, `metadata key ${key} is not an array`);
    return m.value;
  }

  tensor(name: string): GGUFTensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelFileError(this.path, `missing tensor ${name}`);
    return t;
  }

  /**
   * Reads a tensor's bytes into `dest` (allocated when omitted) and returns it.
   * Reads go straight from the file into the destination: no intermediate copy.
   */
  readTensor(name: string, dest?: Uint8Array): Uint8Array {
    const t = this.tensor(name);
    const out = dest ?? new Uint8Array(t.nbytes);
    if (out.byteLength < t.nbytes) throw new Error(`destination for ${name} is too small`);
    this.readTensorRange(name, 0, out.subarray(0, t.nbytes));
    return out.byteLength === t.nbytes ? out : out.subarray(0, t.nbytes);
  }

  /**
   * Reads bytes [from, from + dest.length) of a tensor into `dest` (any view, a WebAssembly
   * memory's included), straight from the file.
   */
  readTensorRange(name: string, from: number, dest: Uint8Array): void {
    const t = this.tensor(name);
    if (from < 0 || from + dest.byteLength > t.nbytes)
      throw new RangeError(
        `bytes ${from}..${from + dest.byteLength} are outside tensor ${name} (${t.nbytes} bytes)`,
      );
    this.fd ??= openSync(this.path, "r");
    let done = 0;
    while (done < dest.byteLength) {
      const chunk = Math.min(dest.byteLength - done, 1 << 30);
      const got = readSync(this.fd, dest, done, chunk, t.offset + from + done);
      if (got <= 0) throw new ModelFileError(this.path, `truncated file: tensor ${name} could not be read`);
      done += got;
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function readValue(c: Cursor, type: number, key: string, file: string): GGUFMetaValue {
  switch (type) {
    case GGUFValueType.UINT8:
      return { type, value: c.u8(key) };
    case GGUFValueType.INT8:
      return { type, value: c.i8(key) };
    case GGUFValueType.UINT16:
      return { type, value: c.u16(key) };
    case GGUFValueType.INT16:
      return { type, value: c.i16(key) };
    case GGUFValueType.UINT32:
      return { type, value: c.u32(key) };
    case GGUFValueType.INT32:
      return { type, value: c.i32(key) };
    case GGUFValueType.FLOAT32:
      return { type, value: c.f32(key) };
    case GGUFValueType.BOOL:
      return { type, value: c.u8(key) !== 0 };
    case GGUFValueType.STRING:
      return { type, value: c.string(key) };
    case GGUFValueType.UINT64:
      return { type, value: c.u64(key) };
    case GGUFValueType.INT64:
      return { type, value: c.i64(key) };
    case GGUFValueType.FLOAT64:
      return { type, value: c.f64(key) };
    case GGUFValueType.ARRAY: {
      const itemType = c.u32(`item type of ${key}`);
      const n = c.count(`length of array ${key}`, c.size);
      return { type, itemType, value: readArray(c, itemType, n, key, file) };
    }
    default:
      throw new ModelFileError(file, `corrupt file: metadata key ${key} has unknown value type ${type}`);
  }
}

function typedArray<T extends { [i: number]: number | bigint }>(
  c: Cursor,
  n: number,
  width: number,
  key: string,
  make: (buf: ArrayBuffer) => T,
): T {
  const b = c.bytes(n * width, key);
  const copy = new ArrayBuffer(n * width);
  new Uint8Array(copy).set(b);
  return make(copy);
}

function readArray(c: Cursor, itemType: number, n: number, key: string, file: string): GGUFArrayValue {
  switch (itemType) {
    case GGUFValueType.UINT8:
      return typedArray(c, n, 1, key, (b) => new Uint8Array(b));
    case GGUFValueType.INT8:
      return typedArray(c, n, 1, key, (b) => new Int8Array(b));
    case GGUFValueType.UINT16:
      return typedArray(c, n, 2, key, (b) => new Uint16Array(b));
    case GGUFValueType.INT16:
      return typedArray(c, n, 2, key, (b) => new Int16Array(b));
    case GGUFValueType.UINT32:
      return typedArray(c, n, 4, key, (b) => new Uint32Array(b));
    case GGUFValueType.INT32:
      return typedArray(c, n, 4, key, (b) => new Int32Array(b));
    case GGUFValueType.FLOAT32:
      return typedArray(c, n, 4, key, (b) => new Float32Array(b));
    case GGUFValueType.FLOAT64:
      return typedArray(c, n, 8, key, (b) => new Float64Array(b));
    case GGUFValueType.UINT64:
      return typedArray(c, n, 8, key, (b) => new BigUint64Array(b));
    case GGUFValueType.INT64:
      return typedArray(c, n, 8, key, (b) => new BigInt64Array(b));
    case GGUFValueType.BOOL: {
      const out: boolean[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = c.u8(key) !== 0;
      return out;
    }
    case GGUFValueType.STRING: {
      const out: string[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = c.string(`${key}[${i}]`);
      return out;
    }
    case GGUFValueType.ARRAY: {
      const out: GGUFMetaValue[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = readValue(c, GGUFValueType.ARRAY, `${key}[${i}]`, file);
      return out;
    }
    default:
      throw new ModelFileError(file, `corrupt file: array ${key} has unknown item type ${itemType}`);
  }
}

/** Opens and parses a GGUF file. Throws ModelFileError with one clear line on any problem. */
export function readGGUF(path: string): GGUFFile {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ModelFileError(path, code === "ENOENT" ? "no such file" : `cannot open (${code ?? String(e)})`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new ModelFileError(path, "is a directory, not a GGUF file");
    const size = st.size;
    const c = new Cursor(fd, size, path);
    if (size < 4) throw new ModelFileError(path, `not a GGUF file (only ${size} bytes)`);
    const magic = c.u32("magic");
    if (magic !== GGUF_MAGIC) {
      const head = Buffer.alloc(4);
      head.writeUInt32LE(magic);
      const shown = /^[\x20-\x7e]{4}$/.test(head.toString("latin1"))
        ? `"${head.toString("latin1")}"`
        : `0x${head.toString("hex")}`;
      throw new ModelFileError(path, `not a GGUF file (magic is ${shown}, expected "GGUF")`);
    }
    const version = c.u32("version");
    if (version !== 2 && version !== 3) {
      throw new ModelFileError(path, `unsupported GGUF version ${version} (Spindle reads versions 2 and 3)`);
    }
    const nTensors = c.count("tensor count", 1 << 24);
    const nKV = c.count("metadata count", 1 << 24);
    const metadata = new Map<string, GGUFMetaValue>();
    for (let i = 0; i < nKV; i++) {
      const key = c.string(`metadata key #${i}`);
      const type = c.u32(`value type of ${key}`);
      metadata.set(key, readValue(c, type, key, path));
    }
    const alignMeta = metadata.get("general.alignment");
    const alignment = alignMeta && typeof alignMeta.value === "number" ? alignMeta.value : DEFAULT_ALIGNMENT;
    if (!(alignment > 0 && (alignment & (alignment - 1)) === 0)) {
      throw new ModelFileError(path, `corrupt file: general.alignment ${alignment} is not a power of two`);
    }
    const infos: { name: string; dims: number[]; type: number; rel: number }[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = c.string(`tensor name #${i}`);
      const nDims = c.u32(`dimension count of ${name}`);
      if (nDims < 1 || nDims > 4)
        throw new ModelFileError(path, `corrupt file: tensor ${name} has ${nDims} dimensions`);
      const dims: number[] = [];
      for (let d = 0; d < nDims; d++) dims.push(c.count(`dimension ${d} of ${name}`, 2 ** 40));
      const type = c.u32(`type of ${name}`);
      const rel = c.count(`offset of ${name}`);
      infos.push({ name, dims, type, rel });
    }
    const dataOffset = Math.ceil(c.pos / alignment) * alignment;
    const tensors = new Map<string, GGUFTensorInfo>();
    for (const { name, dims, type, rel } of infos) {
      const geom = TYPE_GEOMETRY[type];
      if (!geom) throw new ModelFileError(path, `tensor ${name} has unknown type ${type}`);
      const nElements = dims.reduce((a, b) => a * b, 1);
      if (dims[0]! % geom.blockSize !== 0) {
        throw new ModelFileError(
          path,
          `corrupt file: tensor ${name} row length ${dims[0]} is not a multiple of the ${typeName(type)} block size ${geom.blockSize}`,
        );
      }
      const nbytes = (nElements / geom.blockSize) * geom.typeSize;
      const offset = dataOffset + rel;
      if (offset + nbytes > size) {
        throw new ModelFileError(
          path,
          `truncated file: tensor ${name} needs bytes ${offset}..${offset + nbytes} but the file has ${size}`,
        );
      }
      tensors.set(name, { name, dims, type, offset, nbytes, nElements });
    }
    return new GGUFFile(path, version, metadata, tensors, alignment, dataOffset, size);
  } finally {
    closeSync(fd);
  }
}
