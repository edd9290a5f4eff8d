import { Template } from "@huggingface/jinja";
import { SpindleError } from "../errors.js";

/**
 * Chat prompts: OpenAI-style messages rendered with the model's Jinja chat template
 * (`tokenizer.chat_template` in the GGUF), or ChatML when the model has none.
 */

export interface ChatTextPart {
  type: "text";
  text: string;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | (string & {});
  /** A string, OpenAI content parts (text only), or null (e.g. an assistant turn with tool calls). */
  content: string | ChatTextPart[] | null;
  /** Other fields (name, tool_calls, tool_call_id…) are passed to the template unchanged. */
  [key: string]: unknown;
}

export interface RenderChatOptions {
  /** The Jinja template; omitted or empty: ChatML. */
  template?: string;
  messages: ChatMessage[];
  bosToken?: string;
  eosToken?: string;
  /** Append the assistant turn's opening (default true: the prompt is for generating a reply). */
  addGenerationPrompt?: boolean;
  /** OpenAI `tools`, passed to the template as `tools` when given. */
  tools?: unknown[];
  /** More template variables (e.g. `enable_thinking`); the standard ones above take precedence. */
  extra?: Record<string, unknown>;
}

/** The fallback template: ChatML, as used by Qwen, Yi, OpenHermes and many others. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const CACHE_LIMIT = 32;
const cache = new Map<string, Template>();

/** One line: the first line of an error's message, whitespace squeezed. */
function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const line = msg.split("\n").find((l) => l.trim().length > 0) ?? "";
  return line.replace(/\s+/g, " ").trim() || (e instanceof Error ? e.name : "unknown error");
}

/** Compiles a template once; later calls with the same text reuse it (a small LRU). */
function compile(source: string): Template {
  const hit = cache.get(source);
  if (hit) {
    cache.delete(source);
    cache.set(source, hit);
    return hit;
  }
  let t: Template;
  try {
    t = new Template(source);
  } catch (e) {
    // The parser reads past its last token (a TypeError) when a block or expression is never closed.
    const problem =
      e instanceof TypeError && /of undefined/.test(e.message)
        ? "the template ends inside an unclosed block or expression"
        : oneLine(e);
    throw new SpindleError(`chat template has a syntax error: ${problem}`, "chat_template_error");
  }
  cache.set(source, t);
  if (cache.size > CACHE_LIMIT) cache.delete(cache.keys().next().value as string);
  return t;
}

/**
 * Flattens OpenAI content parts to one string: text parts joined with "\n" (as vLLM does).
 * Any other part type (image_url, input_audio…) is rejected: Spindle serves text models.
 */
export function flattenContent(content: ChatMessage["content"], index = 0): string | null {
  if (content === null || content === undefined) return null;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) {
    throw new SpindleError(
      `messages[${index}].content must be a string, an array of content parts, or null`,
      "invalid_request_error",
    );
  }
  const texts: string[] = [];
  for (const part of content as unknown[]) {
    const type = (part as { type?: unknown } | null)?.type;
    if (type !== "text") {
      throw new SpindleError(
        `messages[${index}] has a content part of type ${JSON.stringify(type ?? null)}: only "text" parts are supported`,
        "invalid_request_error",
      );
    }
    const text = (part as { text?: unknown }).text;
    if (typeof text !== "string") {
      throw new SpindleError(
        `messages[${index}] has a text part without a string "text"`,
        "invalid_request_error",
      );
    }
    texts.push(text);
  }
  return texts.join("\n");
}

/**
 * Renders a conversation into the prompt text. Throws SpindleError with one line on a
 * non-text content part, a template syntax error, or a template that fails while rendering
 * (including templates that call `raise_exception`, e.g. "Conversation roles must alternate").
 */
export function renderChat(opts: RenderChatOptions): string {
  const template = compile(opts.template?.trim() ? opts.template : CHATML_TEMPLATE);
  const messages = opts.messages.map((m, i) => ({ ...m, content: flattenContent(m.content, i) }));
  const vars: Record<string, unknown> = {
    ...opts.extra,
    messages,
    bos_token: opts.bosToken ?? "",
    eos_token: opts.eosToken ?? "",
    add_generation_prompt: opts.addGenerationPrompt ?? true,
  };
  if (opts.tools !== undefined) vars.tools = opts.tools;
  try {
    return template.render(vars);
  } catch (e) {
    throw new SpindleError(`chat template failed to render: ${oneLine(e)}`, "chat_template_error");
  }
}
