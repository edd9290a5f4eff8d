import { existsSync, rmdirSync, rmSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { SpindleError } from "../errors.js";
import { filesUnder, findCachedRef, parseRepoRef, stripHubPrefix } from "../model/hub-ref.js";
import { type ModelFileFacts, modelFileFacts } from "../model/model-facts.js";
import { cacheDir, findModel, resolveModel } from "../model/resolve.js";
import { command } from "./options.js";

/**
 * The model cache from the terminal, as Ollama's `list`, `show` and `rm`: the files `spindle pull`
 * (and `serve`/`run` pulling on first use) stored under the cache folder ($SPINDLE_CACHE or
 * ~/.cache/spindle/models), each named by its path there, `<owner>/<repo>/<file>.gguf`.
 */

/** "1.2 GB", "139 MB", "1.1 MB", as Ollama writes sizes (decimal units). */
export function humanSize(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(bytes >= 1e8 ? 0 : 1)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(0)} KB`;
  return `${bytes} B`;
}

/** "3 minutes ago", "2 days ago". */
function ago(d: Date, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - d.getTime()) / 1000));
  const units: [number, string][] = [
    [86400 * 365, "year"],
    [86400 * 30, "month"],
    [86400 * 7, "week"],
    [86400, "day"],
    [3600, "hour"],
    [60, "minute"],
  ];
  for (const [n, unit] of units) {
    const k = Math.floor(s / n);
    if (k >= 1) return `${k} ${unit}${k > 1 ? "s" : ""} ago`;
  }
  return "just now";
}

/** Left-aligned columns separated by three spaces, as Ollama's tables. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  return rows
    .map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join("   "))
    .join("\n");
}

/** Every finished .gguf under the cache (not `.part` downloads), sorted by name. */
export function cachedModels(dir: string = cacheDir()): string[] {
  return filesUnder(dir, 6)
    .filter((p) => p.toLowerCase().endsWith(".gguf"))
    .sort();
}

/** The name `list` shows and `rm` takes: the path under the cache, `/`-separated. */
function cacheName(path: string, dir: string): string {
  return relative(dir, path).split(sep).join("/");
}

/** A model name as `show` and `rm` take it, without pulling: a path, a name the resolver finds, or a cached repository tag. */
function localModel(name: string): string {
  const ref = parseRepoRef(name);
  if (ref) {
    const hit = findCachedRef(ref);
    if (hit) return hit;
  }
  const stripped = stripHubPrefix(name);
  const found = findModel(stripped);
  if (found) return found;
  const bare = parseRepoRef(name, { bare: true });
  const hit = bare && findCachedRef(bare);
  return hit || resolveModel(stripped);
}

export const LIST = command({
  name: "list",
  usage: "spindle list [--json]",
  summary:
    "Lists the models in the cache (what `spindle pull`, `serve` and `run` downloaded): name, size, architecture, parameters, quantization and when it was stored. Models elsewhere (SPINDLE_MODELS folders, paths) are used in place and not listed.",
  options: { json: { type: "boolean", description: "print one JSON object per model instead of the table" } },
});

export function listCommand(args: string[]): number {
  const parsed = LIST.parse(args);
  if (!parsed) return 0;
  const dir = cacheDir();
  const rows: string[][] = [["NAME", "SIZE", "ARCH", "PARAMS", "QUANT", "MODIFIED"]];
  for (const path of cachedModels(dir)) {
    const name = cacheName(path, dir);
    let f: ModelFileFacts | undefined;
    try {
      f = modelFileFacts(path);
    } catch {
      // A file that is not a readable GGUF is still listed, so it can be found and removed.
    }
    if (parsed.values.json) {
      process.stdout.write(
        `${JSON.stringify({
          name,
          path,
          size: f?.size,
          architecture: f?.architecture,
          parameters: f?.parameterCount,
          quantization: f?.quantization,
          modified: f?.modified.toISOString(),
        })}\n`,
      );
      continue;
    }
    rows.push([
      name,
      f ? humanSize(f.size) : "?",
      f?.architecture ?? "unreadable",
      f?.parameterSize ?? "?",
      f?.quantization ?? "?",
      f ? ago(f.modified) : "?",
    ]);
  }
  if (!parsed.values.json) process.stdout.write(`${table(rows)}\n`);
  return 0;
}

export const SHOW = command({
  name: "show",
  usage: "spindle show MODEL [--template | --metadata | --json]",
  summary:
    "Prints what a model file says about itself, read from its header (the weights are not loaded): architecture, parameters, context length, embedding size, quantization and its mix of weight types, and the chat template. MODEL is a path, a model name, or a repository tag already pulled (hf.co/owner/repo:Q4_K_M); show never downloads.",
  options: {
    template: { type: "boolean", description: "print only the chat template, as the file holds it" },
    metadata: { type: "boolean", short: "v", description: "also print every metadata key (arrays left out)" },
    json: { type: "boolean", description: "print everything as one JSON object" },
  },
  allowPositionals: true,
});

export function showCommand(args: string[]): number {
  const parsed = SHOW.parse(args);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 1) {
    process.stderr.write(`spindle show: expected one model\n${SHOW.help()}\n`);
    return 2;
  }
  const f = modelFileFacts(localModel(parsed.positionals[0]!));
  const v = parsed.values;
  if (v.template) {
    if (f.chatTemplate === undefined)
      throw new SpindleError(`${f.fileName} has no chat template (ChatML is used)`);
    process.stdout.write(`${f.chatTemplate}\n`);
    return 0;
  }
  if (v.json) {
    process.stdout.write(`${JSON.stringify({ ...f, modified: f.modified.toISOString() }, null, 2)}\n`);
    return 0;
  }
  const m = f.metadata;
  const a = f.architecture;
  const rows: [string, string | number | undefined][] = [
    ["name", f.name],
    ["architecture", a],
    ["parameters", `${f.parameterSize} (${f.parameterCount.toLocaleString("en-US")})`],
    ["context length", f.contextLength],
    ["embedding length", m[`${a}.embedding_length`] as number | undefined],
    ["layers", m[`${a}.block_count`] as number | undefined],
    ["attention heads", m[`${a}.attention.head_count`] as number | undefined],
    ["KV heads", m[`${a}.attention.head_count_kv`] as number | undefined],
    ["vocabulary", m[`${a}.vocab_size`] as number | undefined],
    ["quantization", f.quantization],
    ["file", `${f.path} (${humanSize(f.size)})`],
  ];
  const section = (title: string, lines: string[]) =>
    `  ${title}\n${lines.map((l) => `    ${l}`).join("\n")}\n\n`;
  let out = section(
    "Model",
    rows.filter(([, x]) => x !== undefined).map(([k, x]) => `${k.padEnd(18)}${String(x)}`),
  );
  out += section(
    "Quantization mix",
    f.quantMix.map(
      (q) =>
        `${q.type.padEnd(8)}${String(q.tensors).padStart(5)} tensors  ${(q.share * 100).toFixed(1).padStart(5)}% of the weights`,
    ),
  );
  const tpl = f.chatTemplate;
  out += section(
    "Chat template",
    tpl === undefined
      ? ["none in the file: ChatML is used"]
      : [
          ...tpl.split("\n").slice(0, 12),
          ...(tpl.split("\n").length > 12 ? ["… (spindle show MODEL --template prints it all)"] : []),
        ],
  );
  if (v.metadata) {
    out += section(
      "Metadata",
      Object.entries(m).map(
        ([k, x]) =>
          `${k.padEnd(40)}${typeof x === "string" && x.length > 80 ? `${x.slice(0, 77)}…` : String(x)}`,
      ),
    );
  }
  process.stdout.write(out);
  return 0;
}

export const RM = command({
  name: "rm",
  usage: "spindle rm MODEL...",
  summary:
    "Deletes models from the cache (a name as `spindle list` shows it, a repository tag such as hf.co/owner/repo:Q4_K_M, or a file name), with any unfinished download of them. Files outside the cache are never deleted.",
  options: {},
  allowPositionals: true,
});

export function rmCommand(args: string[]): number {
  const parsed = RM.parse(args);
  if (!parsed) return 0;
  if (parsed.positionals.length === 0) {
    process.stderr.write(`spindle rm: expected a model\n${RM.help()}\n`);
    return 2;
  }
  const dir = resolve(cacheDir());
  for (const name of parsed.positionals) {
    const asCached = join(dir, ...stripHubPrefix(name).split("/"));
    const path =
      existsSync(asCached) && asCached.toLowerCase().endsWith(".gguf") ? asCached : localModel(name);
    const rel = relative(dir, resolve(path));
    if (rel.startsWith("..") || rel === "") {
      throw new SpindleError(
        `${path} is not in the model cache (${dir}); spindle rm only deletes pulled models`,
      );
    }
    rmSync(path, { force: true });
    rmSync(`${path}.part`, { force: true });
    // Folders left empty up to the cache root go too.
    for (let d = dirname(path); d.startsWith(dir + sep); d = dirname(d)) {
      try {
        rmdirSync(d);
      } catch {
        break;
      }
    }
    process.stdout.write(`deleted ${rel.split(sep).join("/")}\n`);
  }
  return 0;
}
