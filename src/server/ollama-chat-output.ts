import { ChatChoiceOutput, type ChatMessageOut, type ChatOutputMode } from "./chat-output.js";

/**
 * One /api/chat reply as Ollama shows it: `message.content`, and `message.tool_calls` as
 * `[{function: {name, arguments}}]` with arguments an object (OpenAI's are JSON text, and carry an
 * id and type that Ollama's do not). The splitting of the model's text into content and calls is
 * chat-output.ts's (and so src/chat/assistant-output.ts's); this file only reshapes it. Streaming
 * sends content as it comes and each call whole, in the line of the text that completed it.
 */

export interface OllamaToolCall {
  function: { name: string; arguments: Record<string, unknown> };
}

export interface OllamaMessage {
  role: "assistant";
  content: string;
  tool_calls?: OllamaToolCall[];
}

/** A call's arguments as an object: the JSON text parsed, `{}` when it is not an object. */
function argumentsObject(text: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** Ollama's message from OpenAI's (chat-output.ts's ChatMessageOut). */
export function ollamaMessage(m: ChatMessageOut): OllamaMessage {
  return {
    role: "assistant",
    content: m.content ?? "",
    ...(m.tool_calls && m.tool_calls.length > 0
      ? {
          tool_calls: m.tool_calls.map((c) => ({
            function: { name: c.function.name, arguments: argumentsObject(c.function.arguments) },
          })),
        }
      : {}),
  };
}

export class OllamaChatOutput {
  private readonly out: ChatChoiceOutput;
  /** Calls whose arguments are still coming, by index. */
  private readonly pending = new Map<number, { name: string; args: string }>();

  constructor(mode: ChatOutputMode) {
    this.out = new ChatChoiceOutput(mode);
  }

  /** The whole reply's message. */
  message(text: string): OllamaMessage {
    return ollamaMessage(this.out.message(text));
  }

  /**
   * The messages of the stream lines for the next piece of text (and, with `finish`, the end of
   * the reply): content as it comes, then each call whole once its arguments are a complete JSON
   * object (chat-output.ts streams arguments in pieces; Ollama sends a call in one line).
   */
  lines(text: string, finish: boolean): OllamaMessage[] {
    let content = "";
    for (const d of this.out.deltas(text, finish)) {
      if (typeof d.content === "string") content += d.content;
      const tc = d.tool_calls as
        | { index: number; function: { name?: string; arguments: string } }[]
        | undefined;
      for (const c of tc ?? []) {
        const call = this.pending.get(c.index) ?? { name: "", args: "" };
        if (c.function.name !== undefined) call.name = c.function.name;
        call.args += c.function.arguments;
        this.pending.set(c.index, call);
      }
    }
    const done: OllamaToolCall[] = [];
    for (const [index, c] of [...this.pending].sort((a, b) => a[0] - b[0])) {
      if (!finish && !isJsonObject(c.args)) continue;
      done.push({ function: { name: c.name, arguments: argumentsObject(c.args) } });
      this.pending.delete(index);
    }
    const out: OllamaMessage[] = [];
    if (content) out.push({ role: "assistant", content });
    if (done.length > 0) out.push({ role: "assistant", content: "", tool_calls: done });
    return out;
  }
}

function isJsonObject(text: string): boolean {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === "object" && v !== null && !Array.isArray(v);
  } catch {
    return false;
  }
}
