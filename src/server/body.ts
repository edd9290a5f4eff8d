import type { FastifyInstance, FastifyRequest } from "fastify";
import { RPC_PATH_PREFIX } from "./admission.js";
import type { ServerContext } from "./context.js";
import { ApiError, badRequest } from "./errors.js";

/**
 * Request bodies: JSON objects only, and every way a body can be wrong gets a
 * one-line OpenAI-shaped error rather than Fastify's defaults.
 *
 *   application/json (charset utf-8 or none)  → parsed here
 *   larger than ctx.opts.bodyLimit             → 413 (Fastify's FST_ERR_CTP_BODY_TOO_LARGE, mapped in
 *                                                errors.ts; also for chunked uploads, counted as they arrive)
 *   any other content type, or a body without one, or a Content-Encoding → 415
 *   not UTF-8 → 400 invalid_encoding · not JSON → 400 invalid_json · not an object → 400 invalid_body
 *   a POST without any body → 400 missing_body
 */
export function registerBodyParser(app: FastifyInstance, ctx: ServerContext): void {
  // Fastify's built-in parsers (JSON via secure-json-parse, text/plain) are replaced: no other type is accepted.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(
    "application/json",
    { parseAs: "buffer", bodyLimit: ctx.opts.bodyLimit },
    (req: FastifyRequest, body: Buffer | string, done: (err: Error | null, body?: unknown) => void) => {
      try {
        checkEncoding(req);
        done(null, parseJsonObject(typeof body === "string" ? Buffer.from(body) : body));
      } catch (err) {
        done(err as Error);
      }
    },
  );
  // A POST with neither a body nor a content type reaches the route with `body` undefined (an unknown
  // route stays a 404). The RPC service's paths read their bodies themselves (app.ts).
  app.addHook("preValidation", async (req) => {
    if (
      req.method === "POST" &&
      req.body === undefined &&
      !req.is404 &&
      !req.url.startsWith(RPC_PATH_PREFIX)
    ) {
      throw new ApiError(
        400,
        "the request has no body: send a JSON object with Content-Type: application/json",
        "invalid_request_error",
        null,
        "missing_body",
      );
    }
  });
}

function checkEncoding(req: FastifyRequest): void {
  const enc = req.headers["content-encoding"];
  if (enc !== undefined && enc.trim().toLowerCase() !== "identity") {
    throw new ApiError(
      415,
      `Content-Encoding "${oneLine(enc, 40)}" is not supported: send the body uncompressed`,
    );
  }
  const ct = req.headers["content-type"] ?? "";
  const m = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(ct);
  if (m && !/^utf-?8$/i.test(m[1]!)) {
    throw new ApiError(
      415,
      `charset "${oneLine(m[1]!, 40)}" is not supported: send application/json in UTF-8`,
    );
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Bytes → the JSON object they hold, or a 400 that says what is wrong in one line. */
export function parseJsonObject(bytes: Buffer): Record<string, unknown> {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw badRequest("the request body is not valid UTF-8", null, "invalid_encoding");
  }
  if (text.trim().length === 0) {
    throw badRequest("the request body is empty: send a JSON object", null, "invalid_json");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw badRequest(
      `the request body is not valid JSON: ${oneLine(String((err as Error).message))}`,
      null,
      "invalid_json",
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    const what = value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
    throw badRequest(`the request body must be a JSON object, not ${what}`, null, "invalid_body");
  }
  if (hasProtoKey(value)) {
    // A "__proto__" key is harmless in the parsed object but dangerous once merged into another one.
    throw badRequest('the request body must not contain a "__proto__" key', null, "invalid_json");
  }
  return value as Record<string, unknown>;
}

/** Whether any object inside has an own "__proto__" key (iterative: deep nesting cannot overflow the stack). */
function hasProtoKey(root: object): boolean {
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v !== "object" || v === null) continue;
    if (Array.isArray(v)) {
      for (const x of v) if (typeof x === "object" && x !== null) stack.push(x);
      continue;
    }
    if (Object.hasOwn(v, "__proto__")) return true;
    for (const x of Object.values(v)) if (typeof x === "object" && x !== null) stack.push(x);
  }
  return false;
}

/** Whitespace runs (newlines included) to one space, cut to `max` characters. */
function oneLine(s: string, max = 200): string {
  const t = s.replace(/\s+/g, " ").trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}
