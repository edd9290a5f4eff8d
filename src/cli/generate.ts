import { parseArgs } from "node:util";
import { renderChat } from "../chat/template.js";
import { SpindleError } from "../errors.js";
import { describeKernels } from "../kernels/kernels.js";
import { defaultKernelsName, type KernelName, selectKernelsSync } from "../kernels/select.js";
import { ensureModel } from "../model/default-model.js";
import { generate } from "../model/generate.js";
import { loadModel } from "../model/model.js";
import { tuneSmallSplits } from "../model/tune-splits.js";

export const GENERATE_USAGE = `usage: spindle generate [--model M] (--prompt P | --chat P) [--max-tokens N] [--temperature T] [--seed S]
                        [--top-k K] [--top-p P] [--min-p P] [--stop S]...

Prints the continuation of a prompt on stdout and timings on stderr.

  --model M         a .gguf path or a model name (default: the default model, pulled on first use)
  --prompt P        raw text prompt (BOS added per the model's tokenizer)
  --chat P          a user message, rendered with the model's chat template
  --max-tokens N    tokens to generate (default 64)
  --temperature T   0 = greedy (default 0)
  --kernels K       wasm (WebAssembly SIMD, the default once built) or reference (plain TypeScript)
  --threads N       kernel threads a large matmul is split over (default: the cores; $SPINDLE_THREADS)`;

export async function generateCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string", short: "m" },
      prompt: { type: "string", short: "p" },
      chat: { type: "string" },
      "max-tokens": { type: "string", short: "n", default: "64" },
      temperature: { type: "string", default: "0" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      "min-p": { type: "string" },
      seed: { type: "string" },
      stop: { type: "string", multiple: true },
      kernels: { type: "string" },
      threads: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help || (values.prompt === undefined && values.chat === undefined)) {
    process.stdout.write(`${GENERATE_USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  if (values.threads !== undefined) {
    const t = Number(values.threads);
    if (!(Number.isInteger(t) && t >= 1))
      throw new SpindleError(`--threads must be an integer ≥ 1, got "${values.threads}"`);
    process.env.SPINDLE_THREADS = String(t);
  }
  const path = await ensureModel(values.model);
  const t0 = performance.now();
  const model = loadModel(path, {
    kernels: selectKernelsSync((values.kernels as KernelName | undefined) ?? defaultKernelsName()),
  });
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
    onText: (s) => process.stdout.write(s),
  });
  process.stdout.write("\n");
  const n = r.tokens.length;
  process.stderr.write(
    `model ${model.config.name} (${model.config.arch}, ${(model.weightBytes / 2 ** 20).toFixed(1)} MiB) loaded in ${loadMs.toFixed(0)} ms, ${describeKernels(model.transformer.kernels)}\n` +
      `prompt: ${r.promptTokens.length} tokens in ${r.promptMs.toFixed(1)} ms (${((r.promptTokens.length * 1000) / r.promptMs).toFixed(1)} tok/s)\n` +
      `generated: ${n} tokens in ${r.generateMs.toFixed(1)} ms (${n > 0 ? ((n * 1000) / r.generateMs).toFixed(1) : "0"} tok/s), finish: ${r.finishReason}\n`,
  );
  return 0;
}
