import { SYNTH_CHAT_TEMPLATES } from "../chat/hermes-template.js";
import { SpindleError } from "../errors.js";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../gguf/types.js";
import type { PoolingType } from "../model/pooling.js";
import { resolveModel } from "../model/resolve.js";
import {
  SHAPES,
  SYNTH_ARCHS,
  SYNTH_MIXTURES,
  type SynthArch,
  type SynthExperts,
  type SynthMixture,
  type SynthShape,
  synthModel,
} from "../model/synth.js";
import { command } from "./options.js";

const TYPES = SUPPORTED_WEIGHT_TYPES.map(typeName).join(", ");
/** Mixtures --type takes too: those whose name is no weight type's. */
const TYPE_MIXTURES = SYNTH_MIXTURES.filter((m) => !(m in GGMLType));

export const SYNTH = command({
  name: "synth-model",
  usage: `spindle synth-model --out FILE [--shape ${Object.keys(SHAPES).join("|")}] [--arch ${SYNTH_ARCHS.join("|")}]
                           [--type T | --ftype F] [--vocab VOCAB.gguf] [--seed N] [--tied] [--copier] [--pooling P] [--chat-template NAME] [--dim N --layers N ...]
                           [--experts N --experts-used K --expert-ffn N]`,
  summary:
    "Writes a model with deterministic random weights (scaled so logits have a real spread) and the tokenizer of a vocab GGUF: the realistic sizes for tests and benchmarks, without downloading a model. A named shape brings its architecture (phi3-*, gemma2-*, gemma3-*: fused projections, sliding windows, soft-caps, LongRoPE as the real models have them; qwen3-30b-a3b, qwen1.5-moe-a2.7b, mixtral-8x7b, tiny-moe: mixtures of experts); Gemma models are written with tied embeddings, as the real ones are. Prints the file's path on stdout and its parameter count on stderr.",
  options: {
    out: { type: "string", short: "o", arg: "FILE", description: "the .gguf file to write (required)" },
    shape: {
      type: "string",
      arg: "S",
      default: "stories15M",
      description: `a known model's dimensions: ${Object.keys(SHAPES).join(", ")}`,
    },
    arch: {
      type: "string",
      arg: "A",
      description: `override the shape's architecture: ${SYNTH_ARCHS.join(", ")} (default: the shape's, llama for the stories shapes)`,
    },
    type: {
      type: "string",
      arg: "T",
      default: "F32",
      description: `every matrix's weight type (llama-quantize --pure): ${TYPES}; or the mixture ${TYPE_MIXTURES.join(" or ")} (as --ftype)`,
    },
    ftype: {
      type: "string",
      arg: "F",
      description: `llama.cpp's per-tensor mixture of a file type, as llama-quantize assigns it: ${SYNTH_MIXTURES.join(", ")} (e.g. Q4_K_M: Q4_K, with Q6_K for the LM head and some attn_v/ffn_down; Q2_K: Q2_K with Q3_K/Q4_K for attn_v, attn_output, ffn_down)`,
    },
    vocab: {
      type: "string",
      arg: "VOCAB",
      default: "vocab/ggml-vocab-llama-spm.gguf",
      description: "the GGUF whose tokenizer the model gets (a path or a model name)",
    },
    seed: { type: "string", arg: "N", default: "1", description: "seed of the random weights" },
    tied: { type: "boolean", description: "no output.weight: the LM head reuses the token embeddings" },
    copier: {
      type: "boolean",
      description:
        "a model that copies its prompt: the first two layers hand-set to an induction circuit (it continues a passage it has seen), the rest computing but writing nothing; llama, head size 64 (e.g. --shape smollm2-135m): for timing speculation on copied output",
    },
    pooling: {
      type: "string",
      arg: "P",
      description:
        "write <arch>.pooling_type: mean, cls or last (how /v1/embeddings pools; an embedding model's last, as Qwen3's)",
    },
    "chat-template": {
      type: "string",
      arg: "NAME",
      description: `write a chat template instead of the vocab file's: ${Object.keys(SYNTH_CHAT_TEMPLATES).join(", ")} (Spindle's Hermes-style tool-aware template: tools, <tool_call> calls)`,
    },
    dim: { type: "string", arg: "N", description: "override the shape's embedding width" },
    layers: { type: "string", arg: "N", description: "override the shape's number of layers" },
    heads: { type: "string", arg: "N", description: "override the shape's attention heads" },
    "kv-heads": {
      type: "string",
      arg: "N",
      description: "override the shape's KV heads (default: --heads when given)",
    },
    ffn: { type: "string", arg: "N", description: "override the shape's feed-forward width" },
    context: { type: "string", arg: "N", description: "override the shape's context length" },
    experts: {
      type: "string",
      arg: "N",
      description:
        "a mixture of experts with N experts per layer (a llama model becomes Mixtral-style; qwen2moe/qwen3moe shapes have theirs)",
    },
    "experts-used": {
      type: "string",
      arg: "K",
      description: "experts each token runs (the router's top-k; default: the shape's, else 2)",
    },
    "expert-ffn": {
      type: "string",
      arg: "N",
      description: "each expert's feed-forward width (default: the shape's, else --ffn)",
    },
  },
});

/** The shape's experts with the flags' overrides; undefined for a dense model. */
function expertsOf(
  values: { experts?: string; "experts-used"?: string; "expert-ffn"?: string; ffn?: string },
  base: SynthShape,
): SynthExperts | undefined {
  const count = values.experts ?? base.experts?.count;
  if (count === undefined) {
    if (values["experts-used"] !== undefined || values["expert-ffn"] !== undefined)
      throw new SpindleError(
        "--experts-used and --expert-ffn need --experts (or a mixture-of-experts shape)",
      );
    return undefined;
  }
  const int = (v: string | number, flag: string) => {
    const x = Number(v);
    if (!Number.isInteger(x) || x < 1)
      throw new SpindleError(`${flag} must be a positive integer, got "${v}"`);
    return x;
  };
  return {
    ...base.experts,
    count: int(count, "--experts"),
    used: int(values["experts-used"] ?? base.experts?.used ?? 2, "--experts-used"),
    ffnDim: int(values["expert-ffn"] ?? base.experts?.ffnDim ?? values.ffn ?? base.ffnDim, "--expert-ffn"),
  };
}

export function synthModelCommand(args: string[]): number {
  const parsed = SYNTH.parse(args);
  if (!parsed) return 0;
  const { values } = parsed;
  if (!values.out) {
    process.stdout.write(`${SYNTH.help()}\n`);
    return 2;
  }
  const base = SHAPES[values.shape];
  if (!base)
    throw new SpindleError(`unknown shape "${values.shape}" (known: ${Object.keys(SHAPES).join(", ")})`);
  let type: GGMLType | SynthMixture;
  if (values.ftype !== undefined) {
    const f = values.ftype.toUpperCase();
    if (!(SYNTH_MIXTURES as readonly string[]).includes(f))
      throw new SpindleError(`unknown file type "${values.ftype}" (known: ${SYNTH_MIXTURES.join(", ")})`);
    type = f as SynthMixture;
  } else {
    const name = values.type.toUpperCase();
    const t = GGMLType[name as keyof typeof GGMLType];
    if ((TYPE_MIXTURES as readonly string[]).includes(name)) type = name as SynthMixture;
    else if (t !== undefined && SUPPORTED_WEIGHT_TYPES.includes(t)) type = t;
    else
      throw new SpindleError(
        `unknown weight type "${values.type}" (known: ${TYPES}, ${TYPE_MIXTURES.join(", ")})`,
      );
  }
  const arch = values.arch ?? base.arch ?? "llama";
  if (!(SYNTH_ARCHS as readonly string[]).includes(arch))
    throw new SpindleError(`unknown arch "${arch}" (known: ${SYNTH_ARCHS.join(", ")})`);
  if (values.pooling !== undefined && !["mean", "cls", "last"].includes(values.pooling))
    throw new SpindleError(`unknown pooling "${values.pooling}" (mean, cls or last)`);
  const templateName = values["chat-template"];
  const chatTemplate = templateName === undefined ? undefined : SYNTH_CHAT_TEMPLATES[templateName];
  if (templateName !== undefined && chatTemplate === undefined) {
    throw new SpindleError(
      `unknown chat template "${templateName}" (known: ${Object.keys(SYNTH_CHAT_TEMPLATES).join(", ")})`,
    );
  }
  const n = (v: string | undefined, d: number) => (v === undefined ? d : Number(v));
  const shape = {
    ...base,
    dim: n(values.dim, base.dim),
    nLayers: n(values.layers, base.nLayers),
    nHeads: n(values.heads, base.nHeads),
    nKVHeads: n(values["kv-heads"], n(values.heads, base.nKVHeads)),
    ffnDim: n(values.ffn, base.ffnDim),
    contextLength: n(values.context, base.contextLength),
    experts: expertsOf(values, base),
  };
  const r = synthModel({
    arch: arch as SynthArch,
    shape,
    type,
    vocabPath: resolveModel(values.vocab),
    out: values.out,
    seed: Number(values.seed),
    tied: values.tied || arch === "gemma2" || arch === "gemma3",
    pooling: values.pooling as PoolingType | undefined,
    chatTemplate,
    copier: values.copier,
  });
  process.stdout.write(`${r.path}\n`);
  process.stderr.write(`${(r.parameters / 1e6).toFixed(2)}M parameters\n`);
  for (const f of r.fallbacks)
    process.stderr.write(`note: ${f.tensor} stored as ${f.type} (row length not a block multiple)\n`);
  return 0;
}
