import { type Dirent, existsSync, readdirSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, isAbsolute, join, resolve } from "node:path";
import { SpindleError } from "../errors.js";

/**
 * Model resolution: one place that turns `--model` into a file path.
 * A path that exists is used as is; a name is looked up in each folder of
 * $SPINDLE_MODELS (colon-separated), then in the user cache. Files fetched by
 * `spindle pull` sit at <cache>/<owner>/<repo>/<file> and are found by their
 * `owner/repo[@rev]/file` spec or by their bare file name.
 */

/** The user cache where `spindle pull` stores downloads: $SPINDLE_CACHE or ~/.cache/spindle/models. */
export function cacheDir(): string {
  return process.env.SPINDLE_CACHE ?? join(homedir(), ".cache", "spindle", "models");
}

/** Folders searched for a model name, in order. */
export function searchDirs(): string[] {
  const dirs = (process.env.SPINDLE_MODELS ?? "").split(":").filter((d) => d.length > 0);
  return [...dirs, cacheDir()];
}

/** Candidate file names for a model name: as given, with .gguf, and the last path part (for `repo/file` names). */
function candidates(name: string): string[] {
  const out = [name];
  if (!name.endsWith(".gguf")) out.push(`${name}.gguf`);
  const base = basename(name);
  if (base !== name) {
    out.push(base);
    if (!base.endsWith(".gguf")) out.push(`${base}.gguf`);
  }
  return out;
}

/** Returns the path of a model, or undefined when it is in none of the searched places. */
export function findModel(name: string): string | undefined {
  if ((isAbsolute(name) || name.startsWith(".")) && existsSync(name)) return resolve(name);
  if (existsSync(name) && statSync(name).isFile()) return resolve(name);
  for (const dir of searchDirs()) {
    for (const c of candidates(name)) {
      const p = join(dir, c);
      if (existsSync(p) && statSync(p).isFile()) return p;
    }
  }
  return findPulled(name);
}

function isFile(p: string): boolean {
  return existsSync(p) && statSync(p).isFile();
}

/** A pulled model in the cache: by its `owner/repo@rev/file` spec, or by a bare file name anywhere under it. */
function findPulled(name: string): string | undefined {
  const dir = cacheDir();
  const spec = /^([^/@]+)\/([^/@]+)@[^/]+\/(.+)$/.exec(name);
  if (spec) {
    const p = join(dir, spec[1]!, spec[2]!, spec[3]!);
    return isFile(p) ? p : undefined;
  }
  if (name.includes("/") || !existsSync(dir)) return undefined;
  return searchTree(dir, new Set(name.endsWith(".gguf") ? [name] : [name, `${name}.gguf`]), 6);
}

/** Depth-first, in name order, not following directory links. */
function searchTree(dir: string, names: Set<string>, depth: number): string | undefined {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    );
  } catch {
    return undefined;
  }
  for (const e of entries) {
    if (names.has(e.name) && isFile(join(dir, e.name))) return join(dir, e.name);
  }
  if (depth <= 0) return undefined;
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const found = searchTree(join(dir, e.name), names, depth - 1);
    if (found) return found;
  }
  return undefined;
}

/** Like findModel, but a missing model is a one-line error that says where it looked and what to do. */
export function resolveModel(name: string): string {
  const found = findModel(name);
  if (found) return found;
  throw new SpindleError(
    `model "${name}" not found (looked in ${searchDirs().join(", ")}); pass a .gguf path with --model, set SPINDLE_MODELS to a folder of models, or run \`spindle pull <hf-repo>/<file>\``,
    "model_not_found",
  );
}
