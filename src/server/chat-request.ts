import type { ChatMessage } from "../chat/template.js";
import { type ChatOutputMode, chatOutputMode } from "./chat-output.js";
import { chatPrompt } from "./chat-prompt.js";
import type { LoadedModel } from "./context.js";
import { badRequest } from "./errors.js";
import type { StructuredOutput } from "./structured-output.js";
import {
  autoToolFormat,
  outputConstraint,
  type ToolRequest,
  type ToolStructuredOutput,
  toolStructuredOutput,
} from "./tool-request.js";

/**
 * An OpenAI-shaped chat request (checked by openai-schema.ts) made ready to generate: its prompt,
 * rendered with the tools the model may see, how its replies are read (chat-output.ts), and what
 * constrains them. The one place /v1/chat/completions, the RPC's `messages` (rpc/service.ts),
 * /v1/responses and Ollama's /api/chat do this, so tools behave the same on all of them:
 * - tool_choice "none": the model does not see the tools (as vLLM does), and its reply is content;
 * - "required" or a named function: the calls are enforced by the tool grammar (vLLM's form);
 * - "auto": a grammar engages where a call starts, in formats with a text trigger;
 * - a structured output (`structured`, from the request's own field) and an enforced tool choice
 *   together are a 400 (`outputConstraint`).
 */
export interface ChatSetup {
  prompt: { text: string; ids: number[] };
  mode: ChatOutputMode;
  structured: ToolStructuredOutput | StructuredOutput | undefined;
}

/** Where a route's own shape differs: the field an empty conversation is blamed on, and tool errors' paths. */
export interface ChatForm {
  messagesField: string;
  toolOutput: typeof toolStructuredOutput;
}

const CHAT_FORM: ChatForm = { messagesField: "messages", toolOutput: toolStructuredOutput };

export function chatSetup(
  model: LoadedModel,
  r: {
    messages: ChatMessage[];
    templateVars?: Record<string, unknown> | undefined;
    toolRequest: ToolRequest | undefined;
  },
  structured: StructuredOutput | undefined,
  form: ChatForm = CHAT_FORM,
): ChatSetup {
  const tools = r.toolRequest;
  const prompt = chatPrompt(model, {
    messages: r.messages,
    templateVars: r.templateVars,
    tools: tools && tools.choice !== "none" ? tools.tools : undefined,
  });
  const mode = chatOutputMode(model.chatTemplate, prompt.text, tools);
  const constraint = outputConstraint(
    tools,
    tools && form.toolOutput(tools, autoToolFormat(mode.tools, model.tokenizer)),
    structured,
  );
  if (prompt.ids.length === 0) throw badRequest("the rendered conversation is empty", form.messagesField);
  return { prompt, mode, structured: constraint };
}
