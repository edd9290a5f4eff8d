import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { modelFileFacts } from "../model/model-facts.js";
import type { LoadedModel } from "./context.js";

/**
 * What Ollama's /api/tags, /api/show and /api/ps say about a model, read from the served GGUF's
 * header once per file (src/model/model-facts.ts):
 *
 *   family              general.architecture
 *   parameter_size      the tensors' element count, as Ollama writes it ("260K", "135M", "8.0B")
 *   quantization_level  the type holding most of the weights' elements ("Q8_0", "F32", …)
 *   size, modified_at   the file's size and mtime
 *   digest              the file's sha256 (hashed once, streamed, on first request)
 *   model_info          every scalar metadata key (arrays such as the vocabulary are left out, as
 *                       Ollama does unless asked for verbose output) plus general.parameter_count
 *
 * A model without a known file (none today: every backend reads a GGUF) reports what the backend knows.
 */

export interface OllamaModelFacts {
  fileName: string | undefined;
  size: number;
  modifiedAt: string;
  family: string;
  parameterCount: number;
  parameterSize: string;
  quantizationLevel: string;
  modelInfo: Record<string, string | number | boolean>;
  digest(): Promise<string>;
}

const cache = new Map<string, OllamaModelFacts>();

function hashFile(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path)
      .on("data", (b) => h.update(b))
      .on("end", () => resolve(h.digest("hex")))
      .on("error", reject);
  });
}

function fromFile(path: string): OllamaModelFacts {
  const f = modelFileFacts(path);
  let digest: Promise<string> | undefined;
  return {
    fileName: f.fileName,
    size: f.size,
    modifiedAt: f.modified.toISOString(),
    family: f.architecture,
    parameterCount: f.parameterCount,
    parameterSize: f.parameterSize,
    quantizationLevel: f.quantization,
    modelInfo: f.metadata,
    digest: () => {
      digest ??= hashFile(path);
      return digest;
    },
  };
}

export function ollamaModelFacts(m: LoadedModel): OllamaModelFacts {
  const path = m.modelPath;
  if (path !== undefined) {
    let f = cache.get(path);
    if (!f) {
      f = fromFile(path);
      cache.set(path, f);
    }
    return f;
  }
  return {
    fileName: undefined,
    size: 0,
    modifiedAt: new Date(0).toISOString(),
    family: "unknown",
    parameterCount: 0,
    parameterSize: "unknown",
    quantizationLevel: "unknown",
    modelInfo: { "general.context_length": m.info.contextLength },
    digest: async () => "",
  };
}
