import { basename } from "node:path";
import { parseArgs } from "node:util";
import { SpindleError } from "../errors.js";
import { parseSpec, pullModel } from "../model/pull.js";
import { cacheDir } from "../model/resolve.js";
import { ProgressBar, type ProgressStream } from "../progress.js";

export const PULL_USAGE = `usage: spindle pull <owner>/<repo>[@revision]/<file> [--endpoint URL]

Downloads one file of a Hugging Face repo into the model cache and prints its path.
An interrupted download resumes where it stopped when run again.

  --endpoint URL   hub to download from (default: $SPINDLE_HF_ENDPOINT, $HF_ENDPOINT or https://huggingface.co)
  -h, --help       show this help

Environment: HF_TOKEN for gated or private repos; SPINDLE_CACHE for the cache folder.
Example: spindle pull HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf`;

export interface PullCommandIO {
  stdout?: { write(s: string): unknown };
  stderr?: ProgressStream;
  fetchImpl?: typeof fetch;
}

/** `spindle pull <spec> [--endpoint URL]`: the path on stdout, progress and errors on stderr; returns the exit code. */
export async function pullCommand(args: string[], io: PullCommandIO = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;

  let values: { endpoint?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args,
      options: { endpoint: { type: "string" }, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    }));
  } catch (err) {
    stderr.write(`spindle pull: ${err instanceof Error ? err.message : String(err)}\n${PULL_USAGE}\n`);
    return 2;
  }
  if (values.help) {
    stdout.write(`${PULL_USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1) {
    const problem = positionals.length === 0 ? "missing model spec" : "expected one model spec";
    stderr.write(`spindle pull: ${problem}\n${PULL_USAGE}\n`);
    return 2;
  }
  const spec = positionals[0]!;
  try {
    parseSpec(spec);
  } catch (err) {
    stderr.write(`spindle pull: ${(err as Error).message}\n${PULL_USAGE}\n`);
    return 2;
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
