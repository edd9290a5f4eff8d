import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { SpindleError } from "../errors.js";
import { cacheDir as defaultCacheDir } from "./resolve.js";

/**
 * `spindle pull`: download one file of a Hugging Face repo into the model cache.
 *
 * A spec is `<owner>/<repo>[@revision]/<path/in/repo>`; the file lands at
 * `<cache>/<owner>/<repo>/<path/in/repo>` (the revision is not part of the path).
 * Bytes go to `<dest>.part` first, a later pull resumes it with a Range request,
 * and only a file whose size matches the server's is renamed into place.
 */

export interface PullSpec {
  owner: string;
  repo: string;
  revision: string;
  /** Path of the file inside the repo, `/`-separated (may name a subfolder). */
  file: string;
}

export interface PullProgress {
  /** Bytes of the file on disk so far (a resumed download starts at the size of its .part). */
  received: number;
  /** Size of the whole file, when the server said. */
  total: number | undefined;
}

export interface PullOptions {
  /** Hub to download from: default $SPINDLE_HF_ENDPOINT, $HF_ENDPOINT, then https://huggingface.co. */
  endpoint?: string;
  /** Cache root: default `cacheDir()` ($SPINDLE_CACHE or ~/.cache/spindle/models). */
  cacheDir?: string;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
  fetchImpl?: typeof fetch;
}

/** The download could not reach the server, or the connection broke mid-file. */
export class PullNetworkError extends SpindleError {
  constructor(
    message: string,
    readonly url: string,
    /** Short cause, e.g. `ECONNREFUSED` or `getaddrinfo ENOTFOUND huggingface.co`. */
    readonly reason: string,
    /** True when the connection broke after bytes arrived (the .part is kept for a resume). */
    readonly interrupted: boolean,
  ) {
    super(message, "network_unreachable");
    this.name = "PullNetworkError";
  }
}

export const DEFAULT_HF_ENDPOINT = "https://huggingface.co";

const SPEC_HELP =
  "expected <owner>/<repo>[@revision]/<file>, e.g. HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf";
const LOCAL_HINT =
  "use a local file instead: --model /path/to/file.gguf, or set SPINDLE_MODELS to a folder of .gguf files";

function isSafeSegment(s: string): boolean {
  return s.length > 0 && s !== "." && s !== ".." && !s.includes("\\") && !s.includes("\0");
}

/** Parses `owner/repo[@rev]/path/to/file`; a malformed spec is a SpindleError. */
export function parseSpec(spec: string): PullSpec {
  const parts = spec.split("/");
  if (parts.length < 3) throw new SpindleError(`bad model spec "${spec}": ${SPEC_HELP}`, "bad_spec");
  const [owner, repoRev, ...fileParts] = parts as [string, string, ...string[]];
  const at = repoRev.indexOf("@");
  const repo = at < 0 ? repoRev : repoRev.slice(0, at);
  const revision = at < 0 ? "main" : repoRev.slice(at + 1);
  if (![owner, repo, revision, ...fileParts].every(isSafeSegment) || owner.includes("@")) {
    throw new SpindleError(`bad model spec "${spec}": ${SPEC_HELP}`, "bad_spec");
  }
  return { owner, repo, revision, file: fileParts.join("/") };
}

/** True when `s` reads as a pull spec for a .gguf file (not a local path). */
export function isPullSpec(s: string): boolean {
  if (s.startsWith("/") || s.startsWith(".") || s.startsWith("~")) return false;
  try {
    return parseSpec(s).file.toLowerCase().endsWith(".gguf");
  } catch {
    return false;
  }
}

/** Where a spec is stored: `<cacheDir>/<owner>/<repo>/<file>`. */
export function pullDestination(spec: string | PullSpec, cacheDir: string = defaultCacheDir()): string {
  const s = typeof spec === "string" ? parseSpec(spec) : spec;
  return join(cacheDir, s.owner, s.repo, ...s.file.split("/"));
}

export function defaultEndpoint(): string {
  return process.env.SPINDLE_HF_ENDPOINT ?? process.env.HF_ENDPOINT ?? DEFAULT_HF_ENDPOINT;
}

/** `${endpoint}/${owner}/${repo}/resolve/${rev}/${file}`, each part URL-encoded. */
export function pullUrl(spec: string | PullSpec, endpoint: string = defaultEndpoint()): string {
  const s = typeof spec === "string" ? parseSpec(spec) : spec;
  const base = endpoint.replace(/\/+$/, "");
  try {
    new URL(base);
  } catch {
    throw new SpindleError(
      `bad endpoint "${endpoint}": expected a URL such as ${DEFAULT_HF_ENDPOINT}`,
      "bad_endpoint",
    );
  }
  const file = s.file.split("/").map(encodeURIComponent).join("/");
  return `${base}/${encodeURIComponent(s.owner)}/${encodeURIComponent(s.repo)}/resolve/${encodeURIComponent(s.revision)}/${file}`;
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    const st = await stat(path);
    return st.isFile() ? st.size : undefined;
  } catch {
    return undefined;
  }
}

/** The short cause of a failed fetch: the system error code and address when there is one. */
function networkReason(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; depth < 5 && e instanceof Error; depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string" && !code.startsWith("UND_ERR_ABORTED")) {
      return e.message.includes(code) ? e.message : `${code}: ${e.message}`;
    }
    if (e.cause === undefined) break;
    e = e.cause;
  }
  const msg = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
  return `${msg}${cause}`.replace(/\s+/g, " ");
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

/** Parses `bytes a-b/total` (206) or `bytes * /total` (416). */
function parseContentRange(h: string | null): { start?: number; total?: number } {
  const m = h ? /^\s*bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)\s*$/i.exec(h) : null;
  if (!m) return {};
  return {
    start: m[1] !== undefined ? Number(m[1]) : undefined,
    total: m[2] !== undefined && m[2] !== "*" ? Number(m[2]) : undefined,
  };
}

function contentLength(res: Response): number | undefined {
  const enc = res.headers.get("content-encoding");
  if (enc && enc.toLowerCase() !== "identity") return undefined; // fetch decodes: the length is not the file's
  const h = res.headers.get("content-length");
  if (h === null || !/^\d+$/.test(h.trim())) return undefined;
  return Number(h);
}

function httpError(res: Response, url: string, s: PullSpec): SpindleError {
  const status = `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}`;
  if (res.status === 401 || res.status === 403) {
    const hint = process.env.HF_TOKEN
      ? "the token in HF_TOKEN was refused or has no access to this repo (accept the model's terms on its page?)"
      : "the repo may be gated, private or missing: set HF_TOKEN to a Hugging Face access token";
    return new SpindleError(`download of ${url} failed: ${status}; ${hint}`, "http_unauthorized");
  }
  if (res.status === 404) {
    return new SpindleError(
      `no such file in repo ${s.owner}/${s.repo} (revision ${s.revision}): ${s.file} (${url}: ${status})`,
      "http_not_found",
    );
  }
  return new SpindleError(`download of ${url} failed: ${status}`, "http_error");
}

/** Marks an error raised while reading the response body (the network), not while writing the file. */
class BodyError extends Error {
  constructor(readonly inner: unknown) {
    super("body read failed");
  }
}

/**
 * Downloads `spec` into the cache and returns the file's path. A file already in place is
 * returned at once, without touching the network; a `.part` left by an earlier try is resumed.
 */
export async function pullModel(spec: string, opts: PullOptions = {}): Promise<string> {
  const s = parseSpec(spec);
  const dest = pullDestination(s, opts.cacheDir ?? defaultCacheDir());
  if ((await fileSize(dest)) !== undefined) return dest;

  const url = pullUrl(s, opts.endpoint ?? defaultEndpoint());
  const fetchImpl = opts.fetchImpl ?? globalThis.fetch;
  const part = `${dest}.part`;
  await mkdir(dirname(dest), { recursive: true });

  // At most two requests: a resume, then one from scratch if the resume could not be used.
  for (let attempt = 0; ; attempt++) {
    const offset = (await fileSize(part)) ?? 0;
    const headers: Record<string, string> = { "accept-encoding": "identity", "user-agent": "spindle" };
    if (process.env.HF_TOKEN) headers.authorization = `Bearer ${process.env.HF_TOKEN}`;
    if (offset > 0) headers.range = `bytes=${offset}-`;

    let res: Response;
    try {
      res = await fetchImpl(url, { headers, signal: opts.signal, redirect: "follow" });
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      const reason = networkReason(err);
      throw new PullNetworkError(
        `download of ${url} failed (${reason}); no network? ${LOCAL_HINT}`,
        url,
        reason,
        false,
      );
    }

    let flags: "a" | "w";
    let total: number | undefined;
    if (res.status === 416 && offset > 0) {
      // The part already covers the file, or is longer than it.
      await res.body?.cancel();
      const size = parseContentRange(res.headers.get("content-range")).total;
      if (size === offset) {
        await rename(part, dest);
        return dest;
      }
      await rm(part, { force: true });
      if (size !== undefined && offset > size) {
        throw new SpindleError(
          `size mismatch for ${url}: the partial download had ${offset} bytes but the file has ${size}; removed ${part}, run again to download from scratch`,
          "size_mismatch",
        );
      }
      if (attempt > 0) throw httpError(res, url, s);
      continue;
    } else if (res.status === 206 && offset > 0) {
      const range = parseContentRange(res.headers.get("content-range"));
      if (range.start !== offset) {
        // A range we did not ask for: start over.
        await res.body?.cancel();
        await rm(part, { force: true });
        if (attempt > 0)
          throw new SpindleError(`download of ${url} failed: the server sent a wrong byte range`);
        continue;
      }
      flags = "a";
      total = range.total ?? (contentLength(res) !== undefined ? offset + contentLength(res)! : undefined);
    } else if (res.status === 200) {
      flags = "w"; // a server that ignores Range sends the whole file: start from zero
      total = contentLength(res);
    } else {
      await res.body?.cancel();
      throw httpError(res, url, s);
    }

    let received = flags === "a" ? offset : 0;
    opts.onProgress?.({ received, total });
    const body = res.body;
    if (body) {
      const source = async function* () {
        try {
          for await (const chunk of body as AsyncIterable<Uint8Array>) {
            received += chunk.byteLength;
            opts.onProgress?.({ received, total });
            yield chunk;
          }
        } catch (err) {
          throw new BodyError(err);
        }
      };
      try {
        await pipeline(source, createWriteStream(part, { flags }));
      } catch (err) {
        if (opts.signal?.aborted) throw opts.signal.reason ?? err;
        if (err instanceof BodyError) {
          const reason = networkReason(err.inner);
          const of = total !== undefined ? ` of ${mib(total)}` : "";
          throw new PullNetworkError(
            `download of ${url} was interrupted after ${mib(received)}${of} (${reason}); run again to resume, or ${LOCAL_HINT}`,
            url,
            reason,
            true,
          );
        }
        const msg = err instanceof Error ? err.message : String(err);
        throw new SpindleError(`cannot write ${part}: ${msg}`, "write_failed");
      }
    } else {
      await pipeline(async function* () {}, createWriteStream(part, { flags }));
    }

    const size = (await fileSize(part)) ?? 0;
    if (total !== undefined && size !== total) {
      // A short file stays as .part so the next pull resumes it; a long one is garbage.
      if (size > total) await rm(part, { force: true });
      throw new SpindleError(
        `size mismatch for ${url}: got ${size} bytes, expected ${total}; ${size > total ? "removed the download" : `kept ${part} to resume`}, run again`,
        "size_mismatch",
      );
    }
    await rename(part, dest);
    return dest;
  }
}
