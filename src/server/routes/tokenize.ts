import type { FastifyInstance } from "fastify";
import type { ServerContext } from "../context.js";
import { badRequest } from "../errors.js";
import { isObject, type Json, textField } from "../route-helpers.js";

/**
 * vLLM's tokenizer endpoints, with the model's own tokenizer:
 *
 *   POST /tokenize    {prompt | inputs | text, add_special_tokens?, return_token_strs?} → {tokens, count, max_model_len}
 *   POST /detokenize  {tokens, skip_special_tokens?} → {prompt}
 */
export function registerTokenizeRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/tokenize", async (req) => {
    const m = ctx.service.model("/tokenize");
    const body = req.body;
    if (!isObject(body)) throw badRequest("the request body must be a JSON object", null);
    const { text } = textField(body, ["prompt", "inputs", "text"]);
    const addSpecial = body.add_special_tokens ?? true;
    if (typeof addSpecial !== "boolean")
      throw badRequest("add_special_tokens must be true or false", "add_special_tokens");
    const strs = body.return_token_strs ?? false;
    if (typeof strs !== "boolean")
      throw badRequest("return_token_strs must be true or false", "return_token_strs");
    const tokens = m.tokenizer.encode(text, { addSpecial });
    const out: Json = { tokens, count: tokens.length, max_model_len: m.info.contextLength };
    if (strs) out.token_strs = tokens.map((id) => m.tokenizer.tokenText(id));
    return out;
  });

  app.post("/detokenize", async (req) => {
    const m = ctx.service.model("/detokenize");
    const body = req.body;
    if (!isObject(body)) throw badRequest("the request body must be a JSON object", null);
    const tokens = body.tokens;
    if (!Array.isArray(tokens)) throw badRequest('the request needs "tokens": a list of token ids', "tokens");
    const vocab = m.tokenizer.vocabSize;
    tokens.forEach((t, i) => {
      if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t >= vocab) {
        throw badRequest(`tokens[${i}] = ${JSON.stringify(t)} is not a token id (0..${vocab - 1})`, "tokens");
      }
    });
    const skip = body.skip_special_tokens ?? true;
    if (typeof skip !== "boolean")
      throw badRequest("skip_special_tokens must be true or false", "skip_special_tokens");
    let ids = tokens as number[];
    // Without its BOS the text decodes as it was tokenized (SentencePiece's space prefix dropped again).
    if (skip && ids.length > 0 && ids[0] === m.tokenizer.bos) ids = ids.slice(1);
    return { prompt: m.tokenizer.decode(ids, { skipSpecial: skip }) };
  });
}
