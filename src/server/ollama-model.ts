import { createHash } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import { basename } from "node:path";
import { readGGUF } from "../gguf/reader.js";
import { GGMLType } from "../gguf/types.js";
import type { LoadedModel } from "./context.js";

/**
 * What Ollama's /api/tags, /api/show and /api/ps say about a model, read from the served GGUF's
 * header (metadata and tensor table, never the weights) once per file:
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

/** Ollama's human-readable parameter count: "8.0B", "135M", "260K". */
export function parameterSize(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  if (n >= 1e3) return `${Math.round(n / 1e3)}K`;
  return String(n);
}

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
  const st = statSync(path);
  const g = readGGUF(path);
  try {
    const modelInfo: Record<string, string | number | boolean> = {};
    for (const [key, m] of g.metadata) {
      const v = m.value;
      if (key === "tokenizer.chat_template") continue; // it is /api/show's `template`
      if (typeof v === "bigint") modelInfo[key] = Number(v);
      else if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") modelInfo[key] = v;
    }
    let params = 0;
    const byType = new Map<GGMLType, number>();
    for (const t of g.tensors.values()) {
      params += t.nElements;
      byType.set(t.type, (byType.get(t.type) ?? 0) + t.nElements);
    }
    modelInfo["general.parameter_count"] = params;
    const dominant = [...byType.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
    let digest: Promise<string> | undefined;
    return {
      fileName: basename(path),
      size: st.size,
      modifiedAt: st.mtime.toISOString(),
      family: g.getString("general.architecture", "unknown"),
      parameterCount: params,
      parameterSize: parameterSize(params),
      quantizationLevel: dominant !== undefined ? (GGMLType[dominant] ?? "unknown") : "unknown",
      modelInfo,
      digest: () => {
        digest ??= hashFile(path);
        return digest;
      },
    };
  } finally {
    g.close();
  }
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
