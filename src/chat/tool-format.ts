/**
 * How a model writes tool calls, read from its chat template: the formats of the common open
 * model families, and how each turns generated text into calls.
 *
 * - `hermes` (Hermes, Qwen 2.5/3, and the template `spindle synth-model --chat-template hermes`
 *   writes): each call is `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, text may surround them.
 * - `llama3` (Llama 3.1+): the whole reply is a JSON call `{"name": …, "parameters": {…}}` (several
 *   joined by `;`), optionally after `<|python_tag|>`.
 * - `mistral`: `[TOOL_CALLS]` then a JSON array of calls, or `name[ARGS]{…}` (newer templates).
 * - `json` (a template that knows no tool format, and the output of tool_choice `required` or a
 *   named function, whose grammar makes the whole reply JSON): the whole reply is a JSON array of
 *   calls, `{"tool_calls": [...]}`, or one call object.
 *
 * A call object names the function in `name` and its arguments in `arguments` or `parameters` (an
 * object, or a string holding JSON). Text that is not a well-formed call stays text.
 */

export type ToolFormat = "hermes" | "llama3" | "mistral" | "json";

/** One parsed call: the function's name and its arguments as JSON text (OpenAI's `function.arguments`). */
export interface ParsedToolCall {
  name: string;
  arguments: string;
}

export const HERMES_OPEN = "<tool_call>";
export const HERMES_CLOSE = "</tool_call>";
export const LLAMA_PYTHON_TAG = "<|python_tag|>";
export const MISTRAL_TOOL_CALLS = "[TOOL_CALLS]";
const MISTRAL_ARGS = "[ARGS]";

/** The tool-call format a chat template writes (and so the one its model was trained on). */
export function detectToolFormat(template: string | undefined): ToolFormat {
  if (!template) return "json";
  if (template.includes(HERMES_OPEN)) return "hermes";
  if (template.includes(MISTRAL_TOOL_CALLS)) return "mistral";
  if (template.includes(LLAMA_PYTHON_TAG) || template.includes("ipython")) return "llama3";
  return "json";
}

/** Whether a template reads the Jinja `tools` variable (else tools are described in a system paragraph). */
export function templateUsesTools(template: string | undefined): boolean {
  if (!template) return false;
  // `tools` inside a {{ … }} or {% … %} block (not in literal text).
  return /\{[{%](?:(?![%}]\}).)*\btools\b/s.test(template);
}

/** Whether the model thinks inside `<think>…</think>` before its answer (Qwen3, DeepSeek-R1 distills). */
export function templateThinks(template: string | undefined): boolean {
  return !!template && template.includes("</think>");
}

/**
 * Tool call ids as the format's templates accept them: Mistral's templates insist on 9
 * alphanumeric characters; the others take OpenAI's `call_` + 24 characters.
 */
export function toolCallId(format: ToolFormat): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const n = format === "mistral" ? 9 : 24;
  let id = "";
  for (let i = 0; i < n; i++) id += alphabet[Math.floor(Math.random() * alphabet.length)];
  return format === "mistral" ? id : `call_${id}`;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** One call object ({name, arguments | parameters}) as a ParsedToolCall, or undefined. */
export function callFromObject(v: unknown): ParsedToolCall | undefined {
  if (!isObject(v)) return undefined;
  const fn = isObject(v.function) ? v.function : v;
  const name = fn.name;
  if (typeof name !== "string" || name.length === 0) return undefined;
  const args = fn.arguments !== undefined ? fn.arguments : fn.parameters;
  if (args === undefined || args === null) return { name, arguments: "{}" };
  if (typeof args === "string") return isObject(parseJson(args)) ? { name, arguments: args } : undefined;
  if (!isObject(args)) return undefined;
  return { name, arguments: JSON.stringify(args) };
}

/** A list of call objects, or undefined when any of them is not one (or the list is empty). */
function callsFromList(v: unknown): ParsedToolCall[] | undefined {
  if (!Array.isArray(v) || v.length === 0) return undefined;
  const calls = v.map(callFromObject);
  return calls.every((c) => c !== undefined) ? (calls as ParsedToolCall[]) : undefined;
}

/**
 * A whole reply in the `json` format: an array of calls, `{"tool_calls": [...]}`, `{"tool_call": {...}}`,
 * or one call object. Undefined when it is something else (then it is the reply's text).
 */
export function parseJsonCalls(text: string): ParsedToolCall[] | undefined {
  const v = parseJson(text.trim());
  if (Array.isArray(v)) return callsFromList(v);
  if (!isObject(v)) return undefined;
  if (v.tool_calls !== undefined) return callsFromList(v.tool_calls);
  if (v.tool_call !== undefined) {
    const c = callFromObject(v.tool_call);
    return c && [c];
  }
  const c = callFromObject(v);
  return c && [c];
}

/** Llama 3.x: one JSON call, or several joined by `;` (each a whole object). */
export function parseLlamaCalls(text: string): ParsedToolCall[] | undefined {
  const whole = parseJsonCalls(text);
  if (whole) return whole;
  const parts = text.split(/;\s*(?=\{)/);
  if (parts.length < 2) return undefined;
  const calls = parts.map((p) => callFromObject(parseJson(p.trim())));
  return calls.every((c) => c !== undefined) ? (calls as ParsedToolCall[]) : undefined;
}

/** Mistral, the text after `[TOOL_CALLS]` (later `[TOOL_CALLS]` markers included): a JSON array, or `name[ARGS]{…}` calls. */
export function parseMistralCalls(text: string): ParsedToolCall[] | undefined {
  const parts = text
    .split(MISTRAL_TOOL_CALLS)
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  if (parts.length === 0) return undefined;
  const calls: ParsedToolCall[] = [];
  for (const p of parts) {
    const at = p.indexOf(MISTRAL_ARGS);
    if (at > 0) {
      const name = p.slice(0, at).trim();
      const c = callFromObject({ name, arguments: parseJson(p.slice(at + MISTRAL_ARGS.length).trim()) });
      if (!c) return undefined;
      calls.push(c);
      continue;
    }
    const list = parseJsonCalls(p);
    if (!list) return undefined;
    calls.push(...list);
  }
  return calls;
}

/** The body of one Hermes `<tool_call>…</tool_call>`: one call object. */
export function parseHermesCall(body: string): ParsedToolCall | undefined {
  return callFromObject(parseJson(body.trim()));
}
