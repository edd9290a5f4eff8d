import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ModelFileError } from "../../src/errors.js";
import { type GGUFFile, readGGUF } from "../../src/gguf/reader.js";
import { GGMLType, GGUFValueType } from "../../src/gguf/types.js";
import { meta, type TensorToWrite, withMetadata, writeGGUF } from "../../src/gguf/writer.js";
import { liveKernelThreads } from "../../src/kernels/thread-pool.js";
import { loadModel } from "../../src/model/model.js";
import { STORIES_260K, TINY_RANDOM, testModel, VOCAB_GPT2 } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

const dir = tempDir();

/** Every tensor of a file, with its bytes, ready to write back. */
function tensorsOf(g: GGUFFile): TensorToWrite[] {
  return [...g.tensors.values()].map((t) => ({
    name: t.name,
    dims: t.dims,
    type: t.type,
    data: g.readTensor(t.name),
  }));
}

/** The one-line error a bad file gives, from the full model loader (what `spindle` shows the user). */
function loadError(path: string): string {
  try {
    loadModel(path);
  } catch (e) {
    expect(e).toBeInstanceOf(ModelFileError);
    const msg = (e as Error).message;
    expect(msg).not.toContain("\n");
    expect(msg.startsWith(path)).toBe(true);
    return msg;
  }
  throw new Error(`${path} loaded without error`);
}

describe("GGUF reader", () => {
  it("reads stories260K's metadata and tensor table", () => {
    const g = readGGUF(testModel(STORIES_260K));
    expect(g.version).toBe(3);
    expect(g.getString("general.architecture")).toBe("llama");
    expect(g.getNumber("llama.embedding_length")).toBe(64);
    expect(g.getNumber("llama.attention.head_count_kv")).toBe(4);
    expect((g.getArray("tokenizer.ggml.tokens") as string[]).length).toBe(512);
    expect(g.getArray("tokenizer.ggml.scores")).toBeInstanceOf(Float32Array);
    expect(g.tensors.size).toBe(48);
    const emb = g.tensor("token_embd.weight");
    expect(emb.dims).toEqual([64, 512]);
    expect(emb.type).toBe(GGMLType.F32);
    expect(emb.offset % g.alignment).toBe(0);
    const bytes = g.readTensor("token_embd.weight");
    expect(bytes.byteLength).toBe(64 * 512 * 4);
    const f = new Float32Array(bytes.buffer, bytes.byteOffset, 64 * 512);
    expect(f.every(Number.isFinite)).toBe(true);
    // Reads land in caller-owned memory without a copy in between.
    const dest = new Uint8Array(emb.nbytes + 16);
    expect(g.readTensor("token_embd.weight", dest).buffer).toBe(dest.buffer);
    expect(dest.subarray(0, emb.nbytes)).toEqual(bytes);
    g.close();
  });

  it("reads F16 tensors of the tiny random model", () => {
    const g = readGGUF(testModel(TINY_RANDOM));
    expect(g.tensor("token_embd.weight").type).toBe(GGMLType.F16);
    expect(g.tensor("token_embd.weight").nbytes).toBe(8 * 32000 * 2);
  });

  it("round-trips metadata and tensors through the writer", () => {
    const src = readGGUF(testModel(STORIES_260K));
    const tensors = tensorsOf(src);
    const out = join(dir, "copy.gguf");
    writeGGUF(out, withMetadata(src.metadata, { "general.name": meta.str("copy") }), tensors);
    const g = readGGUF(out);
    expect(g.getString("general.name")).toBe("copy");
    expect(g.metadata.size).toBe(src.metadata.size);
    for (const [k, v] of src.metadata) if (k !== "general.name") expect(g.metadata.get(k), k).toEqual(v);
    for (const t of tensors) expect(g.readTensor(t.name), t.name).toEqual(t.data);
    // Written back unchanged, the file is byte-identical to the one llama.cpp's converter wrote.
    const same = join(dir, "same.gguf");
    writeGGUF(same, src.metadata, tensors);
    expect(readFileSync(same).equals(readFileSync(testModel(STORIES_260K)))).toBe(true);
  });
});

describe("bad model files give one clear line", () => {
  const good = readFileSync(testModel(STORIES_260K));

  it("missing file", () => {
    expect(loadError(join(dir, "nope.gguf"))).toMatch(/no such file/);
  });

  it("a directory", () => {
    const d = join(dir, "a-dir.gguf");
    mkdirSync(d);
    expect(loadError(d)).toMatch(/is a directory/);
  });

  it("wrong magic", () => {
    const p = join(dir, "magic.gguf");
    writeFileSync(p, Buffer.concat([Buffer.from("GGML"), good.subarray(4)]));
    expect(loadError(p)).toMatch(/not a GGUF file \(magic is "GGML"/);
    const q = join(dir, "html.gguf");
    writeFileSync(q, "<!DOCTYPE html><html>Not found</html>");
    expect(loadError(q)).toMatch(/not a GGUF file/);
  });

  it("unsupported version", () => {
    const p = join(dir, "v9.gguf");
    const b = Buffer.from(good);
    b.writeUInt32LE(9, 4);
    writeFileSync(p, b);
    expect(loadError(p)).toMatch(/unsupported GGUF version 9/);
  });

  it("truncated anywhere: in the header, in the metadata, in the tensor data", () => {
    for (const cut of [2, 10, 30, 5000, 14000, good.length - 100]) {
      const p = join(dir, `cut-${cut}.gguf`);
      writeFileSync(p, good.subarray(0, cut));
      expect(loadError(p), `cut at ${cut}`).toMatch(/truncated file|not a GGUF file/);
    }
  });

  it("corrupt counts", () => {
    const p = join(dir, "count.gguf");
    const b = Buffer.from(good);
    b.writeBigUInt64LE(1n << 60n, 8); // tensor count
    writeFileSync(p, b);
    expect(loadError(p)).toMatch(/corrupt file: tensor count/);
  });

  it("unsupported architecture", () => {
    // A tokenizer-only GPT-2 file: architecture gpt2.
    expect(loadError(testModel(VOCAB_GPT2))).toMatch(/unsupported architecture "gpt2"/);
  });

  it("unsupported tensor type", () => {
    const src = readGGUF(testModel(STORIES_260K));
    const tensors = tensorsOf(src);
    // attn_q becomes I32: a type GGUF files may hold, but no weight Spindle can compute with.
    const q = tensors.findIndex((t) => t.name === "blk.0.attn_q.weight");
    tensors[q] = { ...tensors[q]!, type: GGMLType.I32 };
    const p = join(dir, "i32.gguf");
    writeGGUF(p, src.metadata, tensors);
    expect(loadError(p)).toMatch(
      /tensor blk\.0\.attn_q\.weight has type I32, which Spindle does not support/,
    );
  });

  it("missing tensor and missing metadata", () => {
    const src = readGGUF(testModel(STORIES_260K));
    const tensors = tensorsOf(src).filter((t) => t.name !== "blk.3.ffn_up.weight");
    const p = join(dir, "missing-tensor.gguf");
    writeGGUF(p, src.metadata, tensors);
    expect(loadError(p)).toMatch(/missing tensor blk\.3\.ffn_up\.weight/);
    const q = join(dir, "missing-meta.gguf");
    writeGGUF(q, withMetadata(src.metadata, { "llama.block_count": undefined }), tensors);
    expect(loadError(q)).toMatch(/missing metadata key llama\.block_count/);
  });

  it("a load that fails stops the kernel threads it started", async () => {
    const src = readGGUF(testModel(STORIES_260K));
    const tensors = tensorsOf(src).filter((t) => t.name !== "blk.4.ffn_down.weight");
    const p = join(dir, "missing-late-tensor.gguf");
    writeGGUF(p, src.metadata, tensors);
    const before = liveKernelThreads();
    const threads = process.env.SPINDLE_THREADS;
    process.env.SPINDLE_THREADS = "2"; // loadModel's own kernel set gets a worker thread
    try {
      expect(loadError(p)).toMatch(/missing tensor blk\.4\.ffn_down\.weight/);
    } finally {
      process.env.SPINDLE_THREADS = threads;
    }
    for (let i = 0; i < 250 && liveKernelThreads() > before; i++) await new Promise((r) => setTimeout(r, 20));
    expect(liveKernelThreads()).toBe(before);
  });

  it("unknown metadata value type", () => {
    // The first metadata value type is at a fixed place: after magic, version, counts and the first key.
    const keyLen = Number(good.readBigUInt64LE(24));
    const typeAt = 24 + 8 + keyLen;
    expect(good.readUInt32LE(typeAt)).toBe(GGUFValueType.ARRAY);
    const b = Buffer.from(good);
    b.writeUInt32LE(77, typeAt);
    const p = join(dir, "vtype.gguf");
    writeFileSync(p, b);
    expect(loadError(p)).toMatch(/unknown value type 77/);
  });
});
