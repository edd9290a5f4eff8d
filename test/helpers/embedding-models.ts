import { join } from "node:path";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType } from "../../src/gguf/types.js";
import { meta, type TensorToWrite, withMetadata, writeGGUF } from "../../src/gguf/writer.js";
import { LLAMA_POOLING, type PoolingType } from "../../src/model/pooling.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { STORIES_260K, testModel, VOCAB_GPT2 } from "./models.js";

/**
 * Models for embedding tests: stories260K with `llama.pooling_type` written (the file says none,
 * which llama.cpp reads as "the last token's state" and Spindle as mean), and a synthesized qwen3
 * with last-token pooling, the architecture of Qwen3's embedding models.
 */

/** A copy of stories260K whose metadata asks for `pooling`, in `dir`. */
export function storiesWithPooling(dir: string, pooling: PoolingType): string {
  const src = readGGUF(testModel(STORIES_260K));
  const tensors: TensorToWrite[] = [...src.tensors.values()].map((t) => ({
    name: t.name,
    dims: t.dims,
    type: t.type,
    data: src.readTensor(t.name),
  }));
  const out = join(dir, `stories260K-${pooling}.gguf`);
  writeGGUF(
    out,
    withMetadata(src.metadata, { "llama.pooling_type": meta.u32(LLAMA_POOLING[pooling]) }),
    tensors,
  );
  src.close();
  return out;
}

/** A small qwen3 (GPT-2 vocabulary, F32) with last-token pooling, in `dir`. */
export function qwen3LastPooling(dir: string): string {
  const out = join(dir, "qwen3-last.gguf");
  synthModel({
    arch: "qwen3",
    shape: { ...SHAPES.tiny!, contextLength: 256 },
    type: GGMLType.F32,
    vocabPath: testModel(VOCAB_GPT2),
    out,
    pooling: "last",
  });
  return out;
}
