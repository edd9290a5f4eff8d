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

const tokenDecoder = new TextDecoder("utf-8", { ignoreBOM: true });

/** A token as text (control tokens shown, as in the output text; partial UTF-8 as U+FFFD). */
export function tokenString(tok: Tokenizer, id: number): string {
  return tokenDecoder.decode(tok.tokenBytes(id, true));
}
