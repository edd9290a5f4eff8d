import { basename } from "node:path";
import { SpindleError } from "../errors.js";
import {
  DEFAULT_QUANT_TAG,
  findCachedRef,
  formatRepoRef,
  parseRepoRef,
  resolveRepoRef,
  stripHubPrefix,
} from "../model/hub-ref.js";
import { parseSpec, pullModel } from "../model/pull.js";
import { cacheDir } from "../model/resolve.js";
import { ProgressBar, type ProgressStream } from "../progress.js";
import { command } from "./options.js";

export const PULL = command({
  name: "pull",
  usage:
    "spindle pull <owner>/<repo>[:QUANT] | hf.co/<owner>/<repo>[:QUANT] | <owner>/<repo>[@revision]/<file.gguf>",
  summary: `Downloads a model from Hugging Face into the model cache and prints its path.
A repository name picks the file by quantization tag from the repository's file list, as Ollama and
llama-server -hf do (default ${DEFAULT_QUANT_TAG}, any case: Q8_0, q4_k_m, F16, IQ4_XS…); <owner>/<repo>/<file>
names the file exactly. An interrupted download resumes where it stopped when run again; a model
already in the cache is not downloaded again.`,
  options: {
    endpoint: {
      type: "string",
      arg: "URL",
      description:
        "hub to download from (default: $SPINDLE_HF_ENDPOINT, $HF_ENDPOINT or https://huggingface.co)",
    },
  },
  footer: `Environment: HF_TOKEN for gated or private repos; SPINDLE_CACHE for the cache folder.
Examples: spindle pull hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
          spindle pull HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf`,
  allowPositionals: true,
});

export interface PullCommandIO {
  stdout?: { write(s: string): unknown };
  stderr?: ProgressStream;
  fetchImpl?: typeof fetch;
}

/** `spindle pull <name> [--endpoint URL]`: the path on stdout, progress and errors on stderr; returns the exit code. */
export async function pullCommand(args: string[], io: PullCommandIO = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;

  let parsed: ReturnType<typeof PULL.parse>;
  try {
    parsed = PULL.parse(args, stdout);
  } catch (err) {
    stderr.write(`spindle pull: ${err instanceof Error ? err.message : String(err)}\n${PULL.help()}\n`);
    return 2;
  }
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    const problem = positionals.length === 0 ? "missing model name" : "expected one model name";
    stderr.write(`spindle pull: ${problem}\n${PULL.help()}\n`);
    return 2;
  }
  const name = positionals[0]!;
  const ref = parseRepoRef(name, { bare: true });
  let spec = stripHubPrefix(name);
  if (!ref) {
    try {
      parseSpec(spec);
    } catch (err) {
      stderr.write(`spindle pull: ${(err as Error).message}\n${PULL.help()}\n`);
      return 2;
    }
  }
  if (ref) {
    const cached = findCachedRef(ref, cacheDir());
    if (cached) {
      stdout.write(`${cached}\n`);
      return 0;
    }
    try {
      spec = await resolveRepoRef(ref, { endpoint: values.endpoint, fetchImpl: io.fetchImpl });
    } catch (err) {
      if (err instanceof SpindleError) {
        stderr.write(`spindle: ${err.message}\n`);
        return 1;
      }
      throw err;
    }
    stderr.write(`spindle: ${formatRepoRef(ref)} is ${spec}\n`);
  }

  const bar = new ProgressBar({ label: basename(spec), stream: stderr });
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once("SIGINT", onSigint);
  try {
    const path = await pullModel(spec, {
      endpoint: values.endpoint,
      cacheDir: cacheDir(),
      signal: controller.signal,
      fetchImpl: io.fetchImpl,
      onProgress: (p) => bar.update(p.received, p.total),
    });
    bar.done();
    stdout.write(`${path}\n`);
    return 0;
  } catch (err) {
    bar.done();
    if (controller.signal.aborted) {
      stderr.write("spindle pull: interrupted; run the same command again to resume\n");
      return 130;
    }
    if (err instanceof SpindleError) {
      stderr.write(`spindle: ${err.message}\n`);
      return 1;
    }
    throw err;
  } finally {
    process.removeListener("SIGINT", onSigint);
  }
}
