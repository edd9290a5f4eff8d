import type { FastifyReply, FastifyRequest } from "fastify";
import type { Tokenizer } from "../tokenizer/index.js";
import { badRequest } from "./errors.js";

/** Helpers every generation route shares. */

/** An AbortSignal that fires when the client goes away before the response is complete. */
export function clientSignal(req: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  const res = reply.raw;
  res.once("close", () => {
    if (!res.writableFinished) ac.abort("the client disconnected");
  });
  if (req.raw.socket?.destroyed) ac.abort("the client disconnected");
  return ac.signal;
}

/** The request's client label (set by admission.ts), or its address. Never an API key. */
export function clientOf(req: FastifyRequest): string {
  return req.spindleClient || req.ip || "unknown";
}

export type Json = Record<string, unknown>;

export const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** A field that is present and not null. */
export const given = (v: unknown) => v !== undefined && v !== null;

/** The text a request names as its prompt: the first of `names` present; one must be. 400 otherwise. */
export function textField(body: Json, names: string[]): { name: string; text: string } {
  for (const name of names) {
    const v = body[name];
    if (!given(v)) continue;
    if (typeof v !== "string") throw badRequest(`${name} must be a string`, name);
    return { name, text: v };
  }
  throw badRequest(`the request needs "${names[0]}": the text`, names[0]!);
}

/** A finite number, or undefined when not given. 400 naming `param` otherwise. */
export function numberField(body: Json, name: string, param = name): number | undefined {
  const v = body[name];
  if (!given(v)) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw badRequest(`${name} must be a number`, param);
  return v;
}

/** An integer in [min, max], or undefined when not given. 400 naming `param` otherwise. */
export function intField(
  body: Json,
  name: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
  param = name,
): number | undefined {
  const v = body[name];
  if (!given(v)) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `between ${min} and ${max}`;
    throw badRequest(`${name} must be an integer ${range}`, param);
  }
  return v;
}

/** true or false, or undefined when not given. 400 naming `param` otherwise. */
export function boolField(body: Json, name: string, param = name): boolean | undefined {
  const v = body[name];
  if (!given(v)) return undefined;
  if (typeof v !== "boolean") throw badRequest(`${name} must be true or false`, param);
  return v;
}

/** Stop strings: one string or a list of at most `max`; empty strings dropped. [] when not given. */
export function stopField(body: Json, name: string, max: number, param = name): string[] {
  const v = body[name];
  if (!given(v)) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || !list.every((x) => typeof x === "string")) {
    throw badRequest(`${name} must be a list of strings`, param);
  }
  if (list.length > max) throw badRequest(`${name} takes at most ${max} strings`, param);
  return list.filter((x) => x.length > 0);
}

const tokenDecoder = new TextDecoder("utf-8", { ignoreBOM: true });

/** A token as text (control tokens shown, as in the output text; partial UTF-8 as U+FFFD). */
export function tokenString(tok: Tokenizer, id: number): string {
  return tokenDecoder.decode(tok.tokenBytes(id, true));
}
