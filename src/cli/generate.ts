import { basename } from "node:path";
import { renderChat } from "../chat/template.js";
import { kvCacheType } from "../engine/kv-sizing.js";
import { SpindleError } from "../errors.js";
import { describeKernels } from "../kernels/kernels.js";
import { defaultKernelsName, type KernelName, selectKernelsSync } from "../kernels/select.js";
import { ensureModel } from "../model/default-model.js";
import { generate } from "../model/generate.js";
import { DEFAULT_KV_CACHE_TYPE } from "../model/kv-cache.js";
import { loadModel, type Model } from "../model/model.js";
import { tuneSmallSplits } from "../model/tune-splits.js";
import { ProgressBar } from "../progress.js";
import { command } from "./options.js";

const MODEL_HELP =
  "a .gguf path, a model name, owner/repo[:QUANT], hf.co/owner/repo[:QUANT] or owner/repo/file.gguf (pulled on first use; default: SmolLM2-135M-Instruct)";

export const GENERATE = command({
  name: "generate",
  usage:
    "spindle generate [--model M] (--prompt P | --chat P) [--max-tokens N] [--temperature T] [--seed S] [options]",
  summary:
    "Prints the continuation of a prompt on stdout and load, prompt and generation timings on stderr. The model runs in this process, one sequence at a time.",
  options: {
    model: { type: "string", short: "m", arg: "M", description: MODEL_HELP },
    prompt: {
      type: "string",
      short: "p",
      arg: "P",
      description: "raw text prompt (BOS added as the model's tokenizer asks)",
    },
    chat: {
      type: "string",
      arg: "P",
      description: "a user message, rendered with the model's chat template",
    },
    "max-tokens": {
      type: "string",
      short: "n",
      arg: "N",
      default: "64",
      description: "most tokens to generate",
    },
    temperature: { type: "string", arg: "T", default: "0", description: "sampling temperature; 0 is greedy" },
    "top-k": { type: "string", arg: "K", description: "sample from the K most likely tokens only" },
    "top-p": {
      type: "string",
      arg: "P",
      description: "sample from the smallest set of tokens whose probability reaches P",
    },
    "min-p": {
      type: "string",
      arg: "P",
      description: "drop tokens less likely than P times the most likely one",
    },
    seed: {
      type: "string",
      arg: "S",
      description: "seed of the sampler's random numbers, for repeatable samples",
    },
    stop: { type: "string", multiple: true, arg: "S", description: "stop before this text (repeatable)" },
    "kv-cache-type": {
      type: "string",
      arg: "T",
      default: DEFAULT_KV_CACHE_TYPE,
      description: "the KV cache's element type, f16 or f32 (llama.cpp's --cache-type-k/-v)",
    },
    kernels: {
      type: "string",
      arg: "K",
      description:
        "wasm (WebAssembly SIMD, the default once built) or reference (plain TypeScript); also $SPINDLE_KERNELS",
    },
    threads: {
      type: "string",
      arg: "N",
      description: "kernel threads a large matmul is split over (default: the cores; also $SPINDLE_THREADS)",
    },
  },
});

export async function generateCommand(args: string[]): Promise<number> {
  const parsed = GENERATE.parse(args);
  if (!parsed) return 0;
  const { values } = parsed;
  if (values.prompt === undefined && values.chat === undefined) {
    process.stdout.write(`${GENERATE.help()}\n`);
    return 2;
  }
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  if (values.threads !== undefined) {
    const t = Number(values.threads);
    if (!(Number.isInteger(t) && t >= 1))
      throw new SpindleError(`--threads must be an integer ≥ 1, got "${values.threads}"`);
    process.env.SPINDLE_THREADS = String(t);
  }
  const kvType = kvCacheType(values["kv-cache-type"]);
  const path = await ensureModel(values.model);
  const t0 = performance.now();
  const bar = process.stderr.isTTY ? new ProgressBar({ label: `loading ${basename(path)}` }) : undefined;
  let model: Model;
  try {
    model = loadModel(path, {
      kernels: selectKernelsSync((values.kernels as KernelName | undefined) ?? defaultKernelsName()),
      onProgress: (loaded, total) => bar?.update(loaded, total),
    });
  } finally {
    bar?.done();
  }
  await tuneSmallSplits(model); // kernel threads up, decode splits measured
  const loadMs = performance.now() - t0;
  let prompt = values.prompt ?? "";
  if (values.chat !== undefined) {
    const tok = model.tokenizer;
    prompt = renderChat({
      template: model.chatTemplate,
      messages: [{ role: "user", content: values.chat }],
      bosToken: tok.bos === undefined ? "" : tok.tokenText(tok.bos),
      eosToken: tok.eos === undefined ? "" : tok.tokenText(tok.eos),
      addGenerationPrompt: true,
    });
  }
  const sampling = {
    temperature: num(values.temperature),
    topK: num(values["top-k"]),
    topP: num(values["top-p"]),
    minP: num(values["min-p"]),
    seed: num(values.seed),
  };
  const r = generate(model, prompt, {
    maxTokens: Number(values["max-tokens"]),
    sampling: Object.fromEntries(Object.entries(sampling).filter(([, v]) => v !== undefined)),
    stop: values.stop,
    kvCacheType: kvType,
    onText: (s) => process.stdout.write(s),
  });
  process.stdout.write("\n");
  const n = r.tokens.length;
  process.stderr.write(
    `model ${model.config.name} (${model.config.arch}, ${(model.weightBytes / 2 ** 20).toFixed(1)} MiB) loaded in ${loadMs.toFixed(0)} ms, ${describeKernels(model.transformer.kernels)}, ${kvType} KV cache\n` +
      `prompt: ${r.promptTokens.length} tokens in ${r.promptMs.toFixed(1)} ms (${((r.promptTokens.length * 1000) / r.promptMs).toFixed(1)} tok/s)\n` +
      `generated: ${n} tokens in ${r.generateMs.toFixed(1)} ms (${n > 0 ? ((n * 1000) / r.generateMs).toFixed(1) : "0"} tok/s), finish: ${r.finishReason}\n`,
  );
  return 0;
}
