import type { ChatMessage } from "./template.js";
import { templateUsesTools } from "./tool-format.js";

/**
 * How tool definitions and a tool conversation reach the model. A template that reads the Jinja
 * `tools` variable gets them as it is (OpenAI's `[{type: "function", function: {...}}]`, which is
 * what Hugging Face templates expect, as llama.cpp's `--jinja` mode and vLLM pass them), and
 * assistant `tool_calls` with their `arguments` as objects (templates write them with `tojson`).
 *
 * A template that knows nothing of tools gets the instruction fallback: a paragraph listing the
 * tools and the reply format (the `json` format of tool-format.ts: `{"tool_calls": [...]}`) in the
 * system message (the first user message when the template has no system role); earlier calls
 * become the assistant's text in that format, and tool results user messages holding
 * `{"tool_response": {...}}` (such templates rarely render a `tool` role).
 */

export interface ToolPrompt {
  messages: ChatMessage[];
  /** The template's `tools` variable; undefined when the template does not read it. */
  tools: unknown[] | undefined;
}

interface FunctionTool {
  function: { name: string; description?: string; parameters?: unknown };
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** An OpenAI tool_calls entry's name and arguments (arguments as JSON text). */
function callParts(call: unknown): { name: string; args: string } {
  const fn = isObject(call) && isObject(call.function) ? call.function : {};
  const args = fn.arguments;
  return {
    name: String(fn.name ?? ""),
    args: typeof args === "string" ? args : JSON.stringify(args ?? {}),
  };
}

function parseArgs(args: string): unknown {
  try {
    return JSON.parse(args);
  } catch {
    return args;
  }
}

/** The system paragraph of the fallback: the tools and the reply format. */
export function toolsParagraph(tools: readonly unknown[]): string {
  const lines = tools.map((t) => {
    const fn = (t as FunctionTool).function;
    return JSON.stringify({
      name: fn.name,
      ...(fn.description ? { description: fn.description } : {}),
      parameters: fn.parameters ?? { type: "object", properties: {} },
    });
  });
  return [
    "You can call these tools (one JSON object per tool: name, description, parameters as JSON Schema):",
    ...lines,
    'To call tools, reply with only this JSON and nothing else: {"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}.',
    "Otherwise, reply to the user as usual.",
  ].join("\n");
}

/** Text of a message's content (string or text parts), "" for null. */
function textOf(content: ChatMessage["content"]): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => p.text).join("\n");
  return "";
}

/** The fallback: tool history as plain turns, and the paragraph in the system (or first user) message. */
function fallback(
  template: string | undefined,
  messages: ChatMessage[],
  tools: readonly unknown[],
): ChatMessage[] {
  const names = new Map<string, string>();
  const out: ChatMessage[] = [];
  for (const m of messages) {
    const calls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
    if (m.role === "assistant" && calls.length > 0) {
      const list = calls.map((c) => {
        const { name, args } = callParts(c);
        if (isObject(c) && typeof c.id === "string") names.set(c.id, name);
        return { name, arguments: parseArgs(args) };
      });
      const text = textOf(m.content);
      const json = JSON.stringify({ tool_calls: list });
      out.push({ role: "assistant", content: text ? `${text}\n${json}` : json });
      continue;
    }
    if (m.role === "tool") {
      const id = typeof m.tool_call_id === "string" ? m.tool_call_id : undefined;
      const name = id !== undefined ? names.get(id) : undefined;
      const response = JSON.stringify({
        tool_response: { ...(name ? { name } : {}), tool_call_id: id, content: textOf(m.content) },
      });
      const prev = out[out.length - 1];
      // Consecutive results go in one user turn (templates that insist on alternating roles).
      if (prev?.role === "user" && prev.toolResults === true)
        prev.content = `${textOf(prev.content)}\n${response}`;
      else out.push({ role: "user", content: response, toolResults: true });
      continue;
    }
    out.push(m);
  }
  if (tools.length > 0) {
    const paragraph = toolsParagraph(tools);
    const hasSystemRole = !template || template.includes("system");
    const target = hasSystemRole
      ? out[0]?.role === "system"
        ? 0
        : -1
      : out.findIndex((m) => m.role === "user");
    if (target >= 0) {
      const m = out[target]!;
      const text = textOf(m.content);
      out[target] = { ...m, content: hasSystemRole ? `${text}\n\n${paragraph}` : `${paragraph}\n\n${text}` };
    } else {
      out.unshift({ role: "system", content: paragraph });
    }
  }
  return out.map(({ toolResults: _, ...m }) => m as ChatMessage);
}

/**
 * The messages and `tools` variable to render a conversation with, given the request's tools
 * (undefined or empty: none were given, or tool_choice is none and the model should not see them).
 * Assistant tool calls in the history always get their arguments as objects when the template renders them.
 */
export function toolPrompt(
  template: string | undefined,
  messages: ChatMessage[],
  tools: readonly unknown[] | undefined,
): ToolPrompt {
  const usesTools = templateUsesTools(template);
  const hasTools = tools !== undefined && tools.length > 0;
  const hasHistory = messages.some((m) => m.role === "tool" || Array.isArray(m.tool_calls));
  if (!usesTools && (hasTools || hasHistory)) {
    return { messages: fallback(template, messages, tools ?? []), tools: undefined };
  }
  const withObjects = messages.map((m) =>
    Array.isArray(m.tool_calls)
      ? {
          ...m,
          tool_calls: m.tool_calls.map((c) => {
            const { args } = callParts(c);
            const fn = isObject(c) && isObject(c.function) ? c.function : {};
            return { ...(isObject(c) ? c : {}), function: { ...fn, arguments: parseArgs(args) } };
          }),
        }
      : m,
  );
  return { messages: withObjects, tools: hasTools ? [...tools] : undefined };
}
