import { SpindleError } from "../errors.js";
import { humanSize, table } from "./models.js";
import { command } from "./options.js";

/**
 * `spindle ps`: what a running server has loaded, asked over its HTTP API as Ollama's `ps` asks
 * its server: GET /api/ps (the model, its size with the KV cache, context length, and Spindle's
 * `kv_cache` {type, bytes, blocks, tokens, usage}) and GET /health (requests running and waiting).
 */

export const PS = command({
  name: "ps",
  usage: "spindle ps [--host 127.0.0.1] [--port 8000] [--url URL] [--api-key KEY] [--json]",
  summary:
    "Shows what a running `spindle serve` has loaded and how full its KV cache is, asked over the server's HTTP API (/api/ps and /health): model, size in memory (weights and KV cache), backend, context length, KV cache size and use, requests running and waiting.",
  options: {
    host: { type: "string", arg: "HOST", default: "127.0.0.1", description: "the server's address" },
    port: { type: "string", short: "p", arg: "PORT", default: "8000", description: "the server's port" },
    url: { type: "string", arg: "URL", description: "the server's base URL, instead of --host and --port" },
    "api-key": {
      type: "string",
      arg: "KEY",
      description: "bearer key, when the server requires one (default: $SPINDLE_API_KEY)",
    },
    json: { type: "boolean", description: "print the server's answers as JSON instead of the table" },
  },
});

interface PsModel {
  name: string;
  size: number;
  context_length?: number;
  backend?: string;
  details?: { quantization_level?: string; parameter_size?: string };
  kv_cache?: {
    type?: string;
    bytes: number;
    blocks?: number;
    tokens: number;
    usage: number;
    /** A Gemma model's sliding-window layers' own pool. */
    sliding_window?: { window: number; blocks: number };
  };
}

async function getJson(base: string, path: string, key: string | undefined): Promise<unknown> {
  const url = `${base}${path}`;
  let res: Response;
  try {
    res = await fetch(url, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    throw new SpindleError(
      `no Spindle server at ${base} (${cause}); start one with \`spindle serve\`, or pass --host/--port`,
    );
  }
  const body = (await res.json().catch(() => undefined)) as Record<string, unknown> | undefined;
  if (res.status === 503 && path === "/health") return body ?? {};
  if (!res.ok) {
    const msg = body && typeof body.error === "string" ? body.error : JSON.stringify(body?.error ?? body);
    throw new SpindleError(`${url}: HTTP ${res.status}${msg ? `: ${msg}` : ""}`);
  }
  return body;
}

export async function psCommand(args: string[]): Promise<number> {
  const parsed = PS.parse(args);
  if (!parsed) return 0;
  const v = parsed.values;
  const base = (v.url ?? `http://${v.host.includes(":") ? `[${v.host}]` : v.host}:${v.port}`).replace(
    /\/+$/,
    "",
  );
  const key = v["api-key"] ?? process.env.SPINDLE_API_KEY;
  const health = (await getJson(base, "/health", key)) as Record<string, unknown>;
  if (health.status === "loading") {
    process.stdout.write("the server is still loading its model\n");
    return 0;
  }
  const ps = (await getJson(base, "/api/ps", key)) as { models?: PsModel[] };
  if (v.json) {
    process.stdout.write(`${JSON.stringify({ ...ps, health }, null, 2)}\n`);
    return 0;
  }
  const rows = [["NAME", "SIZE", "BACKEND", "CONTEXT", "KV CACHE", "KV USED", "RUNNING", "WAITING"]];
  for (const m of ps.models ?? []) {
    const kv = m.kv_cache;
    rows.push([
      m.name,
      humanSize(m.size),
      m.backend ?? "?",
      String(m.context_length ?? "?"),
      kv
        ? `${humanSize(kv.bytes)}${kv.type ? ` ${kv.type}` : ""} (${kv.blocks !== undefined ? `${kv.blocks} blocks, ` : ""}${kv.tokens} tokens${kv.sliding_window ? `; window ${kv.sliding_window.window}: ${kv.sliding_window.blocks} blocks` : ""})`
        : "-",
      kv ? `${(kv.usage * 100).toFixed(1)}%` : "-",
      String(health.running ?? "?"),
      String(health.waiting ?? "?"),
    ]);
  }
  process.stdout.write(`${table(rows)}\n`);
  return 0;
}
