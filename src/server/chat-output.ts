import { type AssistantDelta, AssistantOutput, type ToolCallDelta } from "../chat/assistant-output.js";
import {
  detectToolFormat,
  type ToolFormat,
  templateThinks,
  templateUsesTools,
  toolCallId,
} from "../chat/tool-format.js";
import type { FinishInfo } from "../protocol/events.js";
import { stopOrLength } from "../protocol/events.js";
import { callsEnforced, type ToolRequest } from "./tool-request.js";

/**
 * One chat choice's generated text as OpenAI's chat API shows it: `reasoning_content` (the
 * `<think>` block of thinking models, vLLM's and DeepSeek's field), `content`, and `tool_calls`
 * (each with an id, `function.name` and `function.arguments` as JSON text), for a whole message or
 * as stream deltas. The splitting itself is src/chat/assistant-output.ts; this file knows the wire
 * shapes. Streaming sends a call's index, id, type and name first (arguments ""), then its
 * arguments' text in one or more deltas.
 */

export interface ChatOutputMode {
  /** The format tool calls are parsed in; undefined: no tools (or tool_choice none). */
  tools: ToolFormat | undefined;
  /** A tool grammar makes the reply a JSON array of calls. */
  enforced: boolean;
  /** Ids in the form the format's templates accept when the calls come back. */
  idFormat: ToolFormat;
  reasoning: boolean;
  startsThinking: boolean;
}

/** How a request's replies are read, from the model's template, the rendered prompt and the tool fields. */
export function chatOutputMode(
  template: string | undefined,
  promptText: string,
  tools: ToolRequest | undefined,
): ChatOutputMode {
  const native = templateUsesTools(template) ? detectToolFormat(template) : "json";
  let format: ToolFormat | undefined;
  if (tools && tools.choice !== "none") format = callsEnforced(tools) ? "json" : native;
  const reasoning = templateThinks(template);
  return {
    tools: format,
    enforced: callsEnforced(tools),
    idFormat: native,
    reasoning,
    startsThinking: reasoning && promptText.trimEnd().endsWith("<think>"),
  };
}

export interface OpenAIToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface ChatMessageOut {
  role: "assistant";
  content: string | null;
  refusal: null;
  reasoning_content?: string;
  tool_calls?: OpenAIToolCall[];
}

/**
 * One piece of a reply as it streams, typed: `ChatChoiceOutput.deltas` writes each as an OpenAI
 * chunk's delta, the RPC service (rpc/service.ts) as its stream messages' text and tool call deltas.
 * A call's `call` part (its id and name) comes before any of its `arguments` parts.
 */
export type ChatPart =
  | { kind: "reasoning"; text: string }
  | { kind: "content"; text: string }
  | { kind: "call"; index: number; id: string; name: string }
  | { kind: "arguments"; index: number; text: string };

/** A part as an OpenAI chat chunk's delta. */
function openAIDelta(p: ChatPart): Record<string, unknown> {
  if (p.kind === "reasoning") return { reasoning_content: p.text };
  if (p.kind === "content") return { content: p.text };
  if (p.kind === "call") {
    return {
      tool_calls: [{ index: p.index, id: p.id, type: "function", function: { name: p.name, arguments: "" } }],
    };
  }
  return { tool_calls: [{ index: p.index, function: { arguments: p.text } }] };
}

export class ChatChoiceOutput {
  private readonly parser: AssistantOutput;
  private readonly calls: OpenAIToolCall[] = [];
  private reasoning = "";
  private content = "";

  constructor(private readonly mode: ChatOutputMode) {
    this.parser = new AssistantOutput({
      tools: mode.tools,
      reasoning: mode.reasoning,
      startsThinking: mode.startsThinking,
      streamCalls: mode.enforced,
    });
  }

  /** The parts of the reply the next piece of text settles (and, with `finish`, the end of the reply's). */
  parts(text: string, finish: boolean): ChatPart[] {
    const out: ChatPart[] = [];
    const add = (d: AssistantDelta) => {
      if (d.reasoning) out.push({ kind: "reasoning", text: d.reasoning });
      if (d.content) out.push({ kind: "content", text: d.content });
      for (const c of d.calls) {
        const call = this.record(c);
        if (c.name !== undefined) out.push({ kind: "call", index: c.index, id: call.id, name: c.name });
        if (c.arguments) out.push({ kind: "arguments", index: c.index, text: c.arguments });
      }
    };
    if (text) add(this.parser.push(text));
    if (finish) add(this.parser.finish());
    return out;
  }

  /** Stream deltas (OpenAI's chunk shape) for the next piece of text (and, with `finish`, for the end of the reply). */
  deltas(text: string, finish: boolean): Record<string, unknown>[] {
    return this.parts(text, finish).map(openAIDelta);
  }

  /** The whole message once the reply is complete (after `deltas(…, true)`, or from the whole text). */
  message(text?: string): ChatMessageOut {
    if (text !== undefined) {
      for (const d of [this.parser.push(text), this.parser.finish()]) {
        this.reasoning += d.reasoning;
        this.content += d.content;
        for (const c of d.calls) this.record(c);
      }
    }
    const hasCalls = this.calls.length > 0;
    const content = hasCalls ? this.content.trim() : this.content;
    return {
      role: "assistant",
      content: hasCalls && content.length === 0 ? null : content,
      refusal: null,
      ...(this.mode.reasoning && this.reasoning ? { reasoning_content: this.reasoning } : {}),
      ...(hasCalls ? { tool_calls: this.calls } : {}),
    };
  }

  /** OpenAI's finish_reason: `tool_calls` when the reply called tools and ended on its own. */
  finishReason(f: FinishInfo): "stop" | "length" | "tool_calls" {
    return f.reason === "stop" && this.calls.length > 0 ? "tool_calls" : stopOrLength(f);
  }

  /** Adds a delta to the whole message's calls; returns its call. */
  private record(c: ToolCallDelta): OpenAIToolCall {
    let call = this.calls[c.index];
    if (!call) {
      call = {
        id: toolCallId(this.mode.idFormat),
        type: "function",
        function: { name: c.name ?? "", arguments: "" },
      };
      this.calls[c.index] = call;
    }
    call.function.arguments += c.arguments;
    return call;
  }
}
