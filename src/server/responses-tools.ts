import type { ToolFormat } from "../chat/tool-format.js";
import { ApiError } from "./errors.js";
import {
  parseToolRequest,
  type ToolRequest,
  type ToolStructuredOutput,
  toolStructuredOutput,
} from "./tool-request.js";

/**
 * The Responses API's tool fields, read by the chat route's parser (tool-request.ts): a Responses
 * tool is flat, `{type: "function", name, description, parameters, strict}`, and a named
 * `tool_choice` is `{type: "function", name}`, where chat nests both under `function`. The request
 * is reshaped into the chat form, parsed once, and every error (and every path the grammar compiler
 * reports in a tool's parameters schema) is mapped back to the Responses path: `tools[1].name`,
 * `tools[0].parameters.properties.x`, `tool_choice.name`.
 */

type Body = Record<string, unknown>;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** One flat tool in the nested chat form; anything else is left for the parser to refuse. */
function nestTool(t: unknown): unknown {
  if (!isObject(t) || t.type !== "function") return t;
  const { type, name, description, parameters, strict } = t;
  return { type, function: { name, description, parameters, strict } };
}

/** A chat path or message in the Responses form: `tools[i].function.x` → `tools[i].x`. */
const flatten = (s: string): string =>
  s
    .replace(/(tools\[\d+\])\.function\b/g, "$1")
    .replace('{type: "function", function: {...}}', '{type: "function", name, parameters, ...}')
    .replace('{"type": "function", "function": {"name": ...}}', '{"type": "function", "name": ...}');

/** The request's tools in the chat form (tool-request.ts's ToolRequest); undefined without tools. */
export function parseResponsesTools(body: Body): ToolRequest | undefined {
  const choice = body.tool_choice;
  const named = isObject(choice) && choice.type === "function";
  const chatBody: Body = {
    tools: Array.isArray(body.tools) ? body.tools.map(nestTool) : body.tools,
    tool_choice: named ? { type: "function", function: { name: choice.name } } : choice,
    parallel_tool_calls: body.parallel_tool_calls,
  };
  try {
    return parseToolRequest(chatBody);
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    const aboutName = /names the function|name is missing/.test(e.message);
    const param =
      e.param === "tool_choice" && named && aboutName ? "tool_choice.name" : e.param && flatten(e.param);
    throw new ApiError(e.status, flatten(e.message), e.type, param, e.code, e.retryAfter);
  }
}

/** toolStructuredOutput with the compiler's error paths in the Responses form. */
export function responsesToolOutput(r: ToolRequest, auto?: ToolFormat): ToolStructuredOutput | undefined {
  const out = toolStructuredOutput(r, auto);
  return out && { ...out, field: (specField) => flatten(out.field(specField)) };
}
