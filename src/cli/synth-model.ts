import { parseArgs } from "node:util";
import { SYNTH_CHAT_TEMPLATES } from "../chat/hermes-template.js";
import { SpindleError } from "../errors.js";
import { GGMLType } from "../gguf/types.js";
import type { PoolingType } from "../model/pooling.js";
import { resolveModel } from "../model/resolve.js";
import { SHAPES, SYNTH_MIXTURES, type SynthArch, type SynthMixture, synthModel } from "../model/synth.js";

export const SYNTH_USAGE = `usage: spindle synth-model --out FILE [--shape ${Object.keys(SHAPES).join("|")}] [--arch llama|qwen2|qwen3]
                           [--type F32|F16|BF16|Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q4_K|Q5_K|Q6_K|Q4_K_M] [--vocab VOCAB.gguf]
                           [--seed N] [--tied] [--pooling mean|cls|last] [--chat-template ${Object.keys(SYNTH_CHAT_TEMPLATES).join("|")}]
                           [--dim N --layers N --heads N --kv-heads N --ffn N --context N]

Writes a model with deterministic random weights and the tokenizer of a vocab GGUF.
--pooling writes <arch>.pooling_type: how /v1/embeddings pools (an embedding model's "last", as Qwen3's).
--type Q4_K_M is llama.cpp's per-tensor mixture (Q4_K, with Q6_K for the LM head and some attn_v/ffn_down).
--chat-template hermes writes Spindle's Hermes-style tool-aware chat template (tools, <tool_call> calls).
Defaults: --shape stories15M --arch llama --type F32 --vocab vocab/ggml-vocab-llama-spm.gguf --seed 1`;

export function synthModelCommand(args: string[]): number {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: "string", short: "o" },
      shape: { type: "string", default: "stories15M" },
      arch: { type: "string", default: "llama" },
      type: { type: "string", default: "F32" },
      vocab: { type: "string", default: "vocab/ggml-vocab-llama-spm.gguf" },
      seed: { type: "string", default: "1" },
      tied: { type: "boolean", default: false },
      "chat-template": { type: "string" },
      pooling: { type: "string" },
      dim: { type: "string" },
      layers: { type: "string" },
      heads: { type: "string" },
      "kv-heads": { type: "string" },
      ffn: { type: "string" },
      context: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help || !values.out) {
    process.stdout.write(`${SYNTH_USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const base = SHAPES[values.shape];
  if (!base)
    throw new SpindleError(`unknown shape "${values.shape}" (known: ${Object.keys(SHAPES).join(", ")})`);
  const name = values.type.toUpperCase();
  const type = (SYNTH_MIXTURES as readonly string[]).includes(name)
    ? (name as SynthMixture)
    : GGMLType[name as keyof typeof GGMLType];
  if (type === undefined) throw new SpindleError(`unknown weight type "${values.type}"`);
  if (!["llama", "qwen2", "qwen3"].includes(values.arch))
    throw new SpindleError(`unknown arch "${values.arch}"`);
  const templateName = values["chat-template"];
  const chatTemplate = templateName === undefined ? undefined : SYNTH_CHAT_TEMPLATES[templateName];
  if (templateName !== undefined && chatTemplate === undefined) {
    throw new SpindleError(
      `unknown chat template "${templateName}" (known: ${Object.keys(SYNTH_CHAT_TEMPLATES).join(", ")})`,
    );
  }
  if (values.pooling !== undefined && !["mean", "cls", "last"].includes(values.pooling))
    throw new SpindleError(`unknown pooling "${values.pooling}" (mean, cls or last)`);
  const n = (v: string | undefined, d: number) => (v === undefined ? d : Number(v));
  const shape = {
    ...base,
    dim: n(values.dim, base.dim),
    nLayers: n(values.layers, base.nLayers),
    nHeads: n(values.heads, base.nHeads),
    nKVHeads: n(values["kv-heads"], n(values.heads, base.nKVHeads)),
    ffnDim: n(values.ffn, base.ffnDim),
    contextLength: n(values.context, base.contextLength),
  };
  const r = synthModel({
    arch: values.arch as SynthArch,
    shape,
    type,
    vocabPath: resolveModel(values.vocab),
    out: values.out,
    seed: Number(values.seed),
    tied: values.tied,
    pooling: values.pooling as PoolingType | undefined,
    chatTemplate,
  });
  process.stdout.write(`${r.path}\n`);
  process.stderr.write(`${(r.parameters / 1e6).toFixed(2)}M parameters\n`);
  for (const f of r.fallbacks)
    process.stderr.write(`note: ${f.tensor} stored as ${f.type} (row length not a block multiple)\n`);
  return 0;
}
