import { HERMES_CLOSE, HERMES_OPEN, MISTRAL_TOOL_CALLS, type ToolFormat } from "../chat/tool-format.js";
import { GrammarError, type GrammarSpec, specGrammar } from "../grammar/index.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { badRequest } from "./errors.js";

/**
 * OpenAI's tool fields on /v1/chat/completions: `tools` (functions with a name, a description and
 * their parameters as JSON Schema), `tool_choice` (`none`, `auto`, `required`, or
 * `{type: "function", function: {name}}`) and `parallel_tool_calls`, checked by hand like the rest
 * of the schema (each error a 400 naming the field), and the grammar that enforces a call.
 *
 * Where OpenAI leaves room, Spindle does this (as vLLM does):
 * - `tool_choice` defaults to `auto` with tools and `none` without; a choice other than `none` without
 *   tools is a 400. With `none` the model does not see the tools and its reply is plain content.
 * - `required` and a named function are enforced by a grammar (`toolGrammar`): the reply is a JSON
 *   array of calls `[{"name": …, "arguments": {…}}]` (one call when `parallel_tool_calls` is false),
 *   each valid against its tool's parameters, parsed into `tool_calls` (the `json` format of
 *   src/chat/tool-format.ts).
 * - `auto` lets the model write what it wants; calls in its own format (read from the chat template)
 *   become `tool_calls`, anything else is content. Where the format starts a call with a trigger
 *   written as text (Hermes `<tool_call>`, Mistral `[TOOL_CALLS]`), a triggered grammar engages
 *   there (`autoToolFormat`): the text stays free, and every call written is valid.
 */

export interface FunctionTool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean };
}

export type ToolChoice = "none" | "auto" | "required" | { name: string };

export interface ToolRequest {
  /** The tools as given (checked): what the chat template's `tools` variable receives. */
  tools: FunctionTool[];
  choice: ToolChoice;
  parallel: boolean;
}

/** OpenAI's limit on tools per request. */
export const MAX_TOOLS = 128;
/** Function names as OpenAI allows them. */
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

type Body = Record<string, unknown>;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const given = (body: Body, key: string) => body[key] !== undefined && body[key] !== null;

function parseTool(t: unknown, i: number): FunctionTool {
  const param = `tools[${i}]`;
  if (!isObject(t)) throw badRequest(`${param} must be an object {type: "function", function: {...}}`, param);
  if (t.type !== "function") {
    throw badRequest(
      `${param}.type must be "function"; got ${JSON.stringify(t.type ?? null)}`,
      `${param}.type`,
    );
  }
  const fn = t.function;
  if (!isObject(fn)) throw badRequest(`${param}.function must be an object with a name`, `${param}.function`);
  const name = fn.name;
  if (name === undefined || name === null) {
    throw badRequest(`${param}.function.name is required`, `${param}.function.name`);
  }
  if (typeof name !== "string" || !NAME.test(name)) {
    throw badRequest(
      `${param}.function.name must be 1 to 64 letters, digits, underscores, dots or dashes; got ${JSON.stringify(name)}`,
      `${param}.function.name`,
    );
  }
  if (given(fn, "description") && typeof fn.description !== "string") {
    throw badRequest(`${param}.function.description must be a string`, `${param}.function.description`);
  }
  if (given(fn, "parameters") && !isObject(fn.parameters)) {
    throw badRequest(
      `${param}.function.parameters must be a JSON Schema object`,
      `${param}.function.parameters`,
    );
  }
  if (given(fn, "strict") && typeof fn.strict !== "boolean") {
    throw badRequest(`${param}.function.strict must be true or false`, `${param}.function.strict`);
  }
  return {
    type: "function",
    function: {
      name,
      ...(typeof fn.description === "string" ? { description: fn.description } : {}),
      ...(isObject(fn.parameters) ? { parameters: fn.parameters } : {}),
      ...(typeof fn.strict === "boolean" ? { strict: fn.strict } : {}),
    },
  };
}

function parseChoice(v: unknown, names: Set<string>): ToolChoice {
  if (v === "none" || v === "auto" || v === "required") return v;
  const shape =
    'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}';
  if (!isObject(v) || v.type !== "function" || !isObject(v.function)) throw badRequest(shape, "tool_choice");
  const name = v.function.name;
  if (typeof name !== "string") throw badRequest(`${shape}: the function's name is missing`, "tool_choice");
  if (!names.has(name)) {
    throw badRequest(
      `tool_choice names the function ${JSON.stringify(name)}, which is not among tools (${[...names].join(", ") || "none given"})`,
      "tool_choice",
    );
  }
  return { name };
}

/** The request's tool fields; undefined when it has no tools (or only tool_choice "none"). */
export function parseToolRequest(body: Body): ToolRequest | undefined {
  const tools: FunctionTool[] = [];
  if (given(body, "tools")) {
    const list = body.tools;
    if (!Array.isArray(list)) throw badRequest("tools must be an array of function tools", "tools");
    if (list.length > MAX_TOOLS) throw badRequest(`tools may hold at most ${MAX_TOOLS} functions`, "tools");
    const seen = new Set<string>();
    list.forEach((t, i) => {
      const tool = parseTool(t, i);
      if (seen.has(tool.function.name)) {
        throw badRequest(
          `tools[${i}].function.name ${JSON.stringify(tool.function.name)} is given twice: tool names must be unique`,
          `tools[${i}].function.name`,
        );
      }
      seen.add(tool.function.name);
      tools.push(tool);
    });
  }
  const names = new Set(tools.map((t) => t.function.name));
  let choice: ToolChoice = tools.length > 0 ? "auto" : "none";
  if (given(body, "tool_choice")) {
    if (tools.length === 0 && body.tool_choice !== "none") {
      throw badRequest("tool_choice is only allowed when tools are given", "tool_choice");
    }
    choice = parseChoice(body.tool_choice, names);
  }
  let parallel = true;
  if (given(body, "parallel_tool_calls")) {
    if (typeof body.parallel_tool_calls !== "boolean") {
      throw badRequest("parallel_tool_calls must be true or false", "parallel_tool_calls");
    }
    parallel = body.parallel_tool_calls;
  }
  if (tools.length === 0) return undefined;
  return { tools, choice, parallel };
}

/** The tool's arguments schema (a tool without parameters takes an empty object). */
function parametersOf(t: FunctionTool): Record<string, unknown> {
  return t.function.parameters ?? { type: "object", properties: {}, additionalProperties: false };
}

/** Whether a schema holds a `$ref` anywhere. */
function hasRef(v: unknown): boolean {
  if (Array.isArray(v)) return v.some(hasRef);
  if (!isObject(v)) return false;
  return Object.entries(v).some(([k, x]) => (k === "$ref" && typeof x === "string") || hasRef(x));
}

/** A copy of a schema whose local references (`#`, `#/…`) point into it at `base` instead of at the root. */
function rebaseRefs(v: unknown, base: string): unknown {
  if (Array.isArray(v)) return v.map((x) => rebaseRefs(x, base));
  if (!isObject(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    out[k] =
      k === "$ref" && typeof x === "string" && (x === "#" || x.startsWith("#/"))
        ? base + x.slice(1)
        : rebaseRefs(x, base);
  }
  return out;
}

/**
 * The grammar of the tool calls: for a reply that must call tools (`required`, or a named function)
 * a JSON array of `{"name": <one of the tools>, "arguments": <valid against that tool's
 * parameters>}`, at least one, at most one without parallel calls. For `auto` with a format that
 * has a text trigger (`auto`, from `autoToolFormat`), free text in which each call the model starts
 * is that format's call, valid. Undefined for `none`, and for `auto` without such a format.
 */
export function toolGrammar(r: ToolRequest, auto?: ToolFormat): GrammarSpec | undefined {
  if (r.choice === "none") return undefined;
  if (r.choice === "auto" && auto !== "hermes" && auto !== "mistral") return undefined;
  const chosen = r.choice;
  const tools = typeof chosen === "object" ? r.tools.filter((t) => t.function.name === chosen.name) : r.tools;
  // A parameters schema with references keeps its own root: it moves under $defs, its references rebased.
  const defs: Record<string, unknown> = {};
  const calls = tools.map((t, k) => {
    let args: unknown = parametersOf(t);
    if (hasRef(args)) {
      const name = `tool_${k}`;
      defs[name] = rebaseRefs(args, `#/$defs/${name}`);
      args = { $ref: `#/$defs/${name}` };
    }
    return {
      type: "object",
      properties: { name: { const: t.function.name }, arguments: args },
      required: ["name", "arguments"],
      additionalProperties: false,
    };
  });
  const item = calls.length === 1 ? calls[0]! : { anyOf: calls };
  const $defs = Object.keys(defs).length > 0 ? { $defs: defs } : {};
  const array = {
    type: "array",
    items: item,
    minItems: 1,
    ...(r.parallel ? {} : { maxItems: 1 }),
    ...$defs,
  };
  if (r.choice === "auto" && auto === "hermes") {
    // One call object per `<tool_call>…</tool_call>`.
    return {
      type: "triggered",
      trigger: HERMES_OPEN,
      end: HERMES_CLOSE,
      schema: { ...item, ...$defs },
      ...(r.parallel ? {} : { maxSegments: 1 }),
    };
  }
  if (r.choice === "auto") {
    // Mistral: `[TOOL_CALLS]` then a JSON array of calls.
    return { type: "triggered", trigger: MISTRAL_TOOL_CALLS, end: "", schema: array, maxSegments: 1 };
  }
  return { type: "json_schema", schema: array };
}

/**
 * The format `auto` engages a tool grammar for: the reply's own format (ChatOutputMode.tools) when
 * it starts a call with a trigger the vocabulary writes as text. A trigger that is a control token
 * (as `[TOOL_CALLS]` is in Mistral's newer vocabularies) cannot be part of a grammar's text, so
 * there `auto` stays free, as without a trigger (Llama 3, the generic JSON form).
 */
export function autoToolFormat(format: ToolFormat | undefined, tok: Tokenizer): ToolFormat | undefined {
  const trigger = format === "hermes" ? HERMES_OPEN : format === "mistral" ? MISTRAL_TOOL_CALLS : undefined;
  if (trigger === undefined) return undefined;
  const ids = tok.encode(trigger, { addSpecial: false, parseSpecial: true });
  return ids.some((id) => tok.isControl(id)) ? undefined : format;
}

/** Whether the reply is enforced to be calls (and so parsed as the JSON array of `toolGrammar`). */
export const callsEnforced = (r: ToolRequest | undefined): boolean =>
  r !== undefined && r.choice !== "none" && r.choice !== "auto";

/**
 * The tool grammar as a request's structured output (the shape of structured-output.ts's
 * StructuredOutput, with `field` to map the compiler's error paths): errors the compiler finds in
 * a tool's parameters schema (an unsupported keyword…) name that tool's field, e.g.
 * `tools[1].function.parameters.properties.when.format`.
 */
export interface ToolStructuredOutput {
  spec: GrammarSpec;
  param: string;
  root: string;
  field: (specField: string) => string;
}

export function toolStructuredOutput(r: ToolRequest, auto?: ToolFormat): ToolStructuredOutput | undefined {
  const spec = toolGrammar(r, auto);
  if (!spec) return undefined;
  if (r.choice === "auto") {
    // `auto` asks for no grammar: where the tools' parameters hold what the compiler refuses (a
    // keyword it does not support), the reply stays free rather than the request failing.
    try {
      specGrammar(spec);
    } catch (err) {
      if (err instanceof GrammarError) return undefined;
      throw err;
    }
  }
  const chosen = r.choice;
  const indices = r.tools
    .map((t, i) => ({ name: t.function.name, i }))
    .filter((t) => typeof chosen !== "object" || t.name === chosen.name)
    .map((t) => t.i);
  return {
    spec,
    param: "tools",
    root: "tools",
    field: (specField) => {
      const m = /^schema(?:\.items)?(?:\.anyOf\[(\d+)\])?\.properties\.arguments(.*)$/.exec(specField);
      const i = m ? indices[m[1] === undefined ? 0 : Number(m[1])] : undefined;
      return m && i !== undefined ? `tools[${i}].function.parameters${m[2]}` : "tools";
    },
  };
}

/**
 * What constrains a request's output: its tool grammar (`required` or a named function) or its
 * structured output (`param` names the field that asked for it), never both: that is a 400. With
 * `auto`, a structured output wins over the triggered tool grammar (the tools stay free, as before
 * `auto` had a grammar).
 */
export function outputConstraint<S extends { param: string }>(
  tools: ToolRequest | undefined,
  toolOutput: ToolStructuredOutput | undefined,
  structured: S | undefined,
): ToolStructuredOutput | S | undefined {
  if (!callsEnforced(tools)) return structured ?? toolOutput;
  if (toolOutput && structured)
    throw badRequest(
      `tool_choice ${JSON.stringify(tools?.choice)} constrains the output and so does ${structured.param}: use one`,
      "tool_choice",
      "conflicting_fields",
    );
  return toolOutput ?? structured;
}
