import type { FastifyInstance } from "fastify";
import type { Tokenizer } from "../../tokenizer/index.js";
import { chatPrompt } from "../chat-prompt.js";
import type { ServerContext } from "../context.js";
import { badRequest } from "../errors.js";
import { parseMessages } from "../openai-schema.js";
import { boolField, given, isObject, type Json, textField } from "../route-helpers.js";
import { parseToolRequest } from "../tool-request.js";

/**
 * vLLM's tokenizer endpoints (which also take llama-server's /tokenize fields), with the model's own
 * tokenizer:
 *
 *   POST /tokenize    {prompt | inputs | text | content, add_special_tokens?, return_token_strs?, with_pieces?}
 *                     or {messages, add_generation_prompt?, chat_template_kwargs?}
 *                     → {tokens, count, max_model_len}
 *   POST /detokenize  {tokens, skip_special_tokens?} → {prompt}
 *
 * - `messages` (vLLM's chat form) is rendered with the chat template exactly as /v1/chat/completions
 *   renders it (chatPrompt), `add_generation_prompt` default true as in vLLM; the tokens are those
 *   the chat route's usage.prompt_tokens counts. A text field beside `messages` is a 400.
 * - `content` is llama-server's name for the text, and gets llama-server's default: no special
 *   tokens (BOS) unless `add_special` (llama-server's name; `add_special_tokens` works too) is true.
 *   The other text fields add them by default, as vLLM does.
 * - `with_pieces` (llama-server): `tokens` becomes [{id, piece}], the piece being the token's text
 *   (its bytes as a list when they are not whole UTF-8 characters).
 */

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function piece(tok: Tokenizer, id: number): string | number[] {
  const bytes = tok.tokenBytes(id, true);
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return Array.from(bytes);
  }
}

const TEXT_FIELDS = ["prompt", "inputs", "text", "content"];

export function registerTokenizeRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/tokenize", async (req) => {
    const m = ctx.service.model("/tokenize");
    const body = req.body;
    if (!isObject(body)) throw badRequest("the request body must be a JSON object", null);
    const strs = boolField(body, "return_token_strs") ?? false;
    const withPieces = boolField(body, "with_pieces") ?? false;
    let tokens: number[];
    if (given(body.messages)) {
      const text = TEXT_FIELDS.find((f) => given(body[f]));
      if (text !== undefined) throw badRequest(`give either messages or ${text}, not both`, text);
      const messages = parseMessages(body);
      const addGenerationPrompt = boolField(body, "add_generation_prompt") ?? true;
      const vars = body.chat_template_kwargs;
      if (given(vars) && !isObject(vars))
        throw badRequest("chat_template_kwargs must be an object", "chat_template_kwargs");
      // vLLM's /tokenize takes the chat request's tools too: the count is the chat prompt's.
      const tools = parseToolRequest(body);
      tokens = chatPrompt(
        m,
        {
          messages,
          templateVars: isObject(vars) ? vars : undefined,
          tools: tools && tools.choice !== "none" ? tools.tools : undefined,
        },
        { addGenerationPrompt },
      ).ids;
    } else {
      const { name, text } = textField(body, TEXT_FIELDS);
      const addSpecial =
        boolField(body, "add_special_tokens") ?? boolField(body, "add_special") ?? name !== "content";
      tokens = m.tokenizer.encode(text, { addSpecial });
    }
    const out: Json = {
      tokens: withPieces ? tokens.map((id) => ({ id, piece: piece(m.tokenizer, id) })) : tokens,
      count: tokens.length,
      max_model_len: m.info.contextLength,
    };
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
