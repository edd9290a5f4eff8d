import { statSync } from "node:fs";
import { basename } from "node:path";
import { readGGUF } from "../gguf/reader.js";
import { GGMLType } from "../gguf/types.js";

/**
 * What a GGUF file says about its model, read from its header (metadata and tensor table, never
 * the weights): what `spindle list` and `spindle show` print and Ollama's /api/tags, /api/show
 * and /api/ps report (src/server/ollama-model.ts).
 *
 *   architecture    general.architecture
 *   parameterCount  the tensors' element count; parameterSize writes it as Ollama does ("135M")
 *   quantization    the type holding most of the weights' elements ("Q8_0", "Q4_K", …)
 *   quantMix        every type with its tensor count and share of the elements (a Q4_K_M file is
 *                   mostly Q4_K with some Q6_K)
 *   metadata        every scalar metadata key (arrays such as the vocabulary are left out, as
 *                   Ollama does unless asked for verbose output) plus general.parameter_count;
 *                   the chat template is `chatTemplate`, not a metadata entry
 */

export interface QuantShare {
  type: string;
  tensors: number;
  /** Share of the model's elements, 0..1. */
  share: number;
}

export interface ModelFileFacts {
  path: string;
  fileName: string;
  size: number;
  modified: Date;
  architecture: string;
  name: string | undefined;
  parameterCount: number;
  parameterSize: string;
  quantization: string;
  quantMix: QuantShare[];
  contextLength: number | undefined;
  chatTemplate: string | undefined;
  metadata: Record<string, string | number | boolean>;
}

/** Ollama's human-readable parameter count: "8.0B", "135M", "260K". */
export function parameterSize(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  if (n >= 1e3) return `${Math.round(n / 1e3)}K`;
  return String(n);
}

export function modelFileFacts(path: string): ModelFileFacts {
  const st = statSync(path);
  const g = readGGUF(path);
  try {
    const metadata: Record<string, string | number | boolean> = {};
    for (const [key, m] of g.metadata) {
      const v = m.value;
      if (key === "tokenizer.chat_template") continue;
      if (typeof v === "bigint") metadata[key] = Number(v);
      else if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") metadata[key] = v;
    }
    let params = 0;
    const byType = new Map<GGMLType, { elements: number; tensors: number }>();
    for (const t of g.tensors.values()) {
      params += t.nElements;
      const e = byType.get(t.type) ?? { elements: 0, tensors: 0 };
      e.elements += t.nElements;
      e.tensors += 1;
      byType.set(t.type, e);
    }
    metadata["general.parameter_count"] = params;
    const quantMix = [...byType.entries()]
      .sort((a, b) => b[1].elements - a[1].elements)
      .map(([type, e]) => ({
        type: GGMLType[type] ?? `type ${type}`,
        tensors: e.tensors,
        share: params > 0 ? e.elements / params : 0,
      }));
    const arch = g.getString("general.architecture", "unknown");
    const ctx = metadata[`${arch}.context_length`];
    return {
      path,
      fileName: basename(path),
      size: st.size,
      modified: st.mtime,
      architecture: arch,
      name: g.has("general.name") ? g.getString("general.name") : undefined,
      parameterCount: params,
      parameterSize: parameterSize(params),
      quantization: quantMix[0]?.type ?? "unknown",
      quantMix,
      contextLength: typeof ctx === "number" ? ctx : undefined,
      chatTemplate: g.has("tokenizer.chat_template") ? g.getString("tokenizer.chat_template") : undefined,
      metadata,
    };
  } finally {
    g.close();
  }
}
