import { type Dirent, existsSync, readdirSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { SpindleError } from "../errors.js";
import { defaultEndpoint, PullNetworkError, parseSpec } from "./pull.js";
import { cacheDir as defaultCacheDir } from "./resolve.js";

/**
 * Model names by repository and quantization tag, as Ollama (`hf.co/owner/repo:Q4_K_M`) and
 * llama-server (`-hf owner/repo:Q4_K_M`) take them:
 *
 *   hf.co/owner/repo[:TAG]          huggingface.co/owner/repo[:TAG] too
 *   owner/repo:TAG
 *   owner/repo                      the default tag, Q4_K_M
 *   hf.co/owner/repo/file.gguf      the exact file: the same as owner/repo/file.gguf
 *
 * A tag picks the one .gguf file of the repository whose name ends with it (case-insensitive,
 * after a `-`, `.` or `_`: `Llama-3.2-1B-Instruct-Q4_K_M.gguf` is Q4_K_M, not Q4_K), from the
 * hub's listing (`GET {endpoint}/api/models/{owner}/{repo}`, its `siblings`). Multimodal
 * projectors (`mmproj*`) are never picked. A model split into parts (`-00001-of-00003.gguf`) is
 * refused with what to do, since Spindle loads one file. Once pulled, the same name is found in
 * the cache without the network.
 */

export const DEFAULT_QUANT_TAG = "Q4_K_M";

export interface RepoRef {
  owner: string;
  repo: string;
  revision: string;
  /** The quantization tag as given (or the default), e.g. "Q4_K_M". */
  tag: string;
}

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const HUB_PREFIX = /^(?:https?:\/\/)?(?:hf\.co|huggingface\.co)\//i;
const SPLIT = /-(\d{5})-of-(\d{5})\.gguf$/i;

/** `hf.co/owner/repo/file.gguf` → `owner/repo/file.gguf`; anything else unchanged. */
export function stripHubPrefix(name: string): string {
  return name.replace(HUB_PREFIX, "");
}

/**
 * Reads `name` as a repository reference, or returns undefined when it is not one (a path, a
 * file name, an `owner/repo/file` spec). `owner/repo` without a tag is one only with the hub
 * prefix or when `bare` is set (the caller found no local file of that name).
 */
export function parseRepoRef(name: string, opts: { bare?: boolean } = {}): RepoRef | undefined {
  if (name.startsWith("/") || name.startsWith(".") || name.startsWith("~")) return undefined;
  const hub = HUB_PREFIX.test(name);
  const rest = stripHubPrefix(name);
  const colon = rest.lastIndexOf(":");
  const path = colon < 0 ? rest : rest.slice(0, colon);
  const tag = colon < 0 ? undefined : rest.slice(colon + 1);
  const parts = path.split("/");
  if (parts.length !== 2) return undefined;
  const [owner, repoRev] = parts as [string, string];
  const at = repoRev.indexOf("@");
  const repo = at < 0 ? repoRev : repoRev.slice(0, at);
  const revision = at < 0 ? "main" : repoRev.slice(at + 1);
  if (!SEGMENT.test(owner) || !SEGMENT.test(repo) || !SEGMENT.test(revision)) return undefined;
  if (repo.toLowerCase().endsWith(".gguf")) return undefined;
  if (tag !== undefined && !/^[A-Za-z0-9_.-]+$/.test(tag)) return undefined;
  if (tag === undefined && !hub && !opts.bare) return undefined;
  return { owner, repo, revision, tag: tag ?? DEFAULT_QUANT_TAG };
}

export function formatRepoRef(r: RepoRef): string {
  return `${r.owner}/${r.repo}${r.revision === "main" ? "" : `@${r.revision}`}:${r.tag}`;
}

/** True when the file's name (without .gguf and a split suffix) ends with the tag. */
export function fileHasTag(file: string, tag: string): boolean {
  const base = file.split("/").at(-1)!.toLowerCase();
  if (!base.endsWith(".gguf") || base.startsWith("mmproj")) return false;
  const stem = base.replace(SPLIT, ".gguf").slice(0, -".gguf".length);
  const t = tag.toLowerCase();
  return stem === t || (stem.endsWith(t) && /[-._]/.test(stem[stem.length - t.length - 1] ?? ""));
}

/**
 * The file a tag names among a repository's files: the single-file match with the shortest
 * name. A tag only split models have is an error saying so; no match lists the .gguf files.
 */
export function chooseFile(ref: RepoRef, files: readonly string[]): string {
  const matches = files.filter((f) => fileHasTag(f, ref.tag));
  const whole = matches.filter((f) => !SPLIT.test(f)).sort((a, b) => a.length - b.length || (a < b ? -1 : 1));
  if (whole.length > 0) return whole[0]!;
  const where = `${ref.owner}/${ref.repo}`;
  if (matches.length > 0) {
    const parts = /-(\d{5})-of-(\d{5})\.gguf$/i.exec(matches[0]!)!;
    throw new SpindleError(
      `${where}:${ref.tag} is split into ${Number(parts[2])} files (${matches[0]}, …); Spindle loads a single-file GGUF: choose another quantization, or merge the parts with llama.cpp's \`llama-gguf-split --merge\` and pass the merged file with --model`,
      "split_model",
    );
  }
  const ggufs = files.filter(
    (f) => f.toLowerCase().endsWith(".gguf") && !f.toLowerCase().startsWith("mmproj"),
  );
  throw new SpindleError(
    ggufs.length === 0
      ? `${where} has no .gguf files`
      : `${where} has no .gguf file tagged ${ref.tag}; its files: ${ggufs.join(", ")}`,
    "quant_not_found",
  );
}

export interface ListOptions {
  endpoint?: string;
  fetchImpl?: typeof fetch;
  signal?: AbortSignal;
}

/** The repository's file names, from the hub's model API. */
export async function listRepoFiles(ref: RepoRef, opts: ListOptions = {}): Promise<string[]> {
  const base = (opts.endpoint ?? defaultEndpoint()).replace(/\/+$/, "");
  const path = `${encodeURIComponent(ref.owner)}/${encodeURIComponent(ref.repo)}`;
  const url = `${base}/api/models/${path}${ref.revision === "main" ? "" : `/revision/${encodeURIComponent(ref.revision)}`}`;
  const headers: Record<string, string> = { "user-agent": "spindle", accept: "application/json" };
  if (process.env.HF_TOKEN) headers.authorization = `Bearer ${process.env.HF_TOKEN}`;
  let res: Response;
  try {
    res = await (opts.fetchImpl ?? globalThis.fetch)(url, { headers, signal: opts.signal });
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    throw new PullNetworkError(
      `cannot list the files of ${ref.owner}/${ref.repo} at ${url} (${cause}); no network? use a local file instead: --model /path/to/file.gguf`,
      url,
      cause,
      false,
    );
  }
  if (!res.ok) {
    await res.body?.cancel();
    const status = `HTTP ${res.status}`;
    if (res.status === 401 || res.status === 403 || res.status === 404) {
      throw new SpindleError(
        `no repository ${ref.owner}/${ref.repo} (revision ${ref.revision}) at ${base} (${status}); check the name${process.env.HF_TOKEN ? "" : ", or set HF_TOKEN if it is gated or private"}`,
        "repo_not_found",
      );
    }
    throw new SpindleError(`listing ${url} failed: ${status}`, "http_error");
  }
  const body = (await res.json()) as { siblings?: { rfilename?: unknown }[] };
  if (!Array.isArray(body.siblings)) {
    throw new SpindleError(`${url} answered without a file list (no "siblings")`, "http_error");
  }
  return body.siblings.map((s) => s.rfilename).filter((f): f is string => typeof f === "string");
}

/** The `owner/repo[@rev]/file` spec a reference names, asking the hub for the file list. */
export async function resolveRepoRef(ref: RepoRef, opts: ListOptions = {}): Promise<string> {
  const file = chooseFile(ref, await listRepoFiles(ref, opts));
  const spec = `${ref.owner}/${ref.repo}${ref.revision === "main" ? "" : `@${ref.revision}`}/${file}`;
  parseSpec(spec); // the hub's name must be a safe path
  return spec;
}

/** The paths of the files under `dir`, down to `depth` folders below it (unreadable folders skipped). */
export function filesUnder(dir: string, depth: number): string[] {
  const out: string[] = [];
  const walk = (d: string, left: number) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory() && left > 0) walk(p, left - 1);
      else if (e.isFile()) out.push(p);
    }
  };
  walk(dir, depth);
  return out;
}

/** A file pulled earlier for this reference (same repository and tag), without the network. */
export function findCachedRef(ref: RepoRef, dir: string = defaultCacheDir()): string | undefined {
  const root = join(dir, ref.owner, ref.repo);
  if (!existsSync(root)) return undefined;
  const files = filesUnder(root, 4).map((p) => relative(root, p).split(sep).join("/"));
  try {
    return join(root, ...chooseFile(ref, files).split("/"));
  } catch {
    return undefined;
  }
}
