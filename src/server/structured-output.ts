import type { GrammarError, GrammarSpec } from "../grammar/constraint.js";
import { type ApiError, badRequest } from "./errors.js";
import { given, isObject, type Json } from "./route-helpers.js";

/**
 * Structured output, the one place where every protocol's field that says what the output must be
 * becomes a GrammarSpec (src/grammar/constraint.ts), which the engine compiles and enforces. Every
 * generation route calls `structuredOutput` with its body and its dialect; at most one such field
 * may be given (two are a 400 naming the second), and a field that cannot be honoured is a 400 naming
 * it, never dropped.
 *
 *   dialect        fields
 *   openai         response_format {type: text | json_object | json_schema, json_schema: {name, schema,
 *                  strict}}; vLLM's structured_outputs {json | regex | choice | grammar | json_object}
 *                  and guided_json, guided_regex, guided_choice, guided_grammar; llama-server's
 *                  json_schema and grammar (which it also takes on its OpenAI routes)
 *   llama-server   json_schema, grammar (GBNF), response_format as on its OpenAI routes
 *   tgi            parameters.grammar {type: json | json_schema | regex, value}
 *   ollama         format: "json" or a JSON schema
 *   responses      text.format {type: text | json_object | json_schema, name, schema, strict}
 *   rpc            the GenerateRequest's response_format (proto/spindle/v1/inference.proto), as
 *                  {json_schema: "<JSON text>"} | {json_object: true} | {regex} | {choice: [...]} |
 *                  {gbnf} | {lark} (service.ts turns the proto's oneof into this)
 *
 * A JSON schema may come as an object (or a boolean schema) or, where vLLM allows it, as a JSON
 * string. A grammar (vLLM's guided_grammar / structured_outputs.grammar) is GBNF when it has a
 * `::=` rule, else Lark's EBNF (src/grammar/lark.ts); llama-server's
 * `grammar` is GBNF. The spec's own problems (a schema
 * keyword not supported, a bad regex) are found by the compiler in the engine and come back as a
 * GrammarError, which `grammarError` turns into a 400 naming the request's field.
 */

export type StructuredDialect = "openai" | "llama-server" | "tgi" | "ollama" | "responses" | "rpc";

export interface StructuredOutput {
  spec: GrammarSpec;
  /** The request field it came from (e.g. "response_format", "guided_json", "parameters.grammar"). */
  param: string;
  /** Where the spec's payload (its schema, pattern, choices or grammar) is in the request. */
  root: string;
  /** Maps a compiler error's field to the request's own, where `root` alone cannot (a tool grammar wraps each tool's parameters). */
  field?: (specField: string) => string;
}

type Found = StructuredOutput | undefined;

/** The request's structured-output field as a GrammarSpec, or undefined when it has none. 400s name the field. */
export function structuredOutput(body: Json, dialect: StructuredDialect): StructuredOutput | undefined {
  const found: StructuredOutput[] = [];
  const add = (s: Found) => {
    if (!s) return;
    if (found.length > 0) {
      throw badRequest(
        `${s.param} and ${found[0]!.param} both constrain the output: give only one of them`,
        s.param,
        "conflicting_fields",
      );
    }
    found.push(s);
  };
  switch (dialect) {
    case "openai":
      add(responseFormat(body.response_format, "response_format"));
      add(vllmStructured(body));
      add(llamaServerFields(body));
      break;
    case "llama-server":
      add(responseFormat(body.response_format, "response_format"));
      add(llamaServerFields(body));
      break;
    case "tgi":
      add(tgiGrammar(isObject(body.parameters) ? body.parameters.grammar : undefined));
      break;
    case "ollama":
      add(ollamaFormat(body.format));
      break;
    case "responses":
      add(responsesFormat(isObject(body.text) ? body.text.format : undefined));
      break;
    case "rpc":
      add(rpcFormat(body.response_format));
      break;
  }
  return found[0];
}

/**
 * A GrammarError from the engine (its field is the spec's: "schema.properties.age", "pattern",
 * "choices[2]", "" for the whole) as a 400 naming the request's field.
 */
export function grammarError(err: GrammarError, so: StructuredOutput | undefined): ApiError {
  const param = so ? requestField(err.field, so) : err.field || null;
  return badRequest(`${param ?? "grammar"}: ${err.reason}`, param, "invalid_grammar");
}

function requestField(specField: string, so: StructuredOutput): string {
  if (so.field) return so.field(specField);
  if (specField === "") return so.param;
  const cut = specField.search(/[.[]/);
  return cut < 0 ? so.root : so.root + specField.slice(cut);
}

const json = (schema: unknown, param: string, root = param): StructuredOutput => ({
  spec: { type: "json_schema", schema },
  param,
  root,
});

/** A JSON schema: an object, a boolean schema, or (vLLM) a JSON string of one. */
function schemaValue(v: unknown, param: string, allowString: boolean): unknown {
  if (allowString && typeof v === "string") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(v);
    } catch {
      throw badRequest(
        `${param} is not valid JSON: give a JSON schema (an object)`,
        param,
        "invalid_grammar",
      );
    }
    return schemaValue(parsed, param, false);
  }
  if (!isObject(v) && typeof v !== "boolean") {
    throw badRequest(
      `${param} must be a JSON schema (an object${allowString ? ", or a JSON string of one" : ""})`,
      param,
    );
  }
  return v;
}

function str(v: unknown, param: string): string {
  if (typeof v !== "string" || v.length === 0) throw badRequest(`${param} must be a non-empty string`, param);
  return v;
}

function choices(v: unknown, param: string): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((c) => typeof c === "string")) {
    throw badRequest(`${param} must be a non-empty list of strings`, param);
  }
  return v as string[];
}

/**
 * vLLM's grammars: GBNF (llama.cpp's, and xgrammar's EBNF) when a line, its `#` or `//` comment left
 * out, writes a rule `::=` (or the text is empty), else Lark — vLLM's own test (grammar_is_likely_lark).
 */
function grammarSpec(text: string): GrammarSpec {
  const gbnf =
    text === "" || text.split("\n").some((line) => line.replace(/(#|\/\/).*$/, "").includes("::="));
  return gbnf ? { type: "gbnf", grammar: text } : { type: "lark", grammar: text };
}

/** OpenAI's response_format (also llama-server's on its OpenAI routes). */
function responseFormat(rf: unknown, param: string): Found {
  if (!given(rf)) return undefined;
  if (!isObject(rf)) throw badRequest(`${param} must be an object such as {"type": "json_object"}`, param);
  switch (rf.type) {
    case "text":
      return undefined;
    case "json_object":
      // llama-server's extension: json_object with a schema.
      if (given(rf.schema))
        return json(schemaValue(rf.schema, `${param}.schema`, false), param, `${param}.schema`);
      return { spec: { type: "json_object" }, param, root: param };
    case "json_schema": {
      const js = rf.json_schema;
      const p = `${param}.json_schema`;
      if (!isObject(js)) throw badRequest(`${p} must be an object with name and schema`, p);
      if (given(js.name) && typeof js.name !== "string")
        throw badRequest(`${p}.name must be a string`, `${p}.name`);
      if (given(js.strict) && typeof js.strict !== "boolean") {
        throw badRequest(`${p}.strict must be true or false`, `${p}.strict`);
      }
      // Without a schema: any JSON object (llama-server and vLLM read it so).
      if (!given(js.schema)) return { spec: { type: "json_object" }, param, root: p };
      return json(schemaValue(js.schema, `${p}.schema`, false), param, `${p}.schema`);
    }
    default:
      throw badRequest(
        `${param}.type must be "text", "json_object" or "json_schema"; got ${JSON.stringify(rf.type ?? null)}`,
        `${param}.type`,
      );
  }
}

/** vLLM's structured_outputs object and the older guided_* fields. */
function vllmStructured(body: Json): Found {
  let out: Found;
  const one = (s: StructuredOutput) => {
    if (out) {
      throw badRequest(
        `${s.param} and ${out.param} both constrain the output: give only one of them`,
        s.param,
        "conflicting_fields",
      );
    }
    out = s;
  };
  const so = body.structured_outputs;
  if (given(so)) {
    if (!isObject(so)) throw badRequest("structured_outputs must be an object", "structured_outputs");
    for (const key of Object.keys(so)) {
      const v = so[key];
      const p = `structured_outputs.${key}`;
      if (!given(v)) continue;
      switch (key) {
        case "json":
          one(json(schemaValue(v, p, true), p));
          break;
        case "regex":
          one({ spec: { type: "regex", pattern: str(v, p) }, param: p, root: p });
          break;
        case "choice":
          one({ spec: { type: "choice", choices: choices(v, p) }, param: p, root: p });
          break;
        case "grammar":
          one({ spec: grammarSpec(str(v, p)), param: p, root: p });
          break;
        case "json_object":
          if (v !== true && v !== false) throw badRequest(`${p} must be true or false`, p);
          if (v) one({ spec: { type: "json_object" }, param: p, root: p });
          break;
        case "disable_any_whitespace":
        case "disable_additional_properties":
        case "whitespace_pattern":
        case "structural_tag":
        case "backend":
          // Options of vLLM's backends: "backend" is accepted (there is one engine); the others change
          // what is valid, so they are refused rather than ignored.
          if (key !== "backend") throw badRequest(`${p} is not supported`, p);
          break;
        default:
          throw badRequest(
            `${p} is not a structured_outputs field (json, regex, choice, grammar, json_object)`,
            p,
          );
      }
    }
  }
  const guided: [string, (v: unknown, p: string) => GrammarSpec][] = [
    ["guided_json", (v, p) => ({ type: "json_schema", schema: schemaValue(v, p, true) })],
    ["guided_regex", (v, p) => ({ type: "regex", pattern: str(v, p) })],
    ["guided_choice", (v, p) => ({ type: "choice", choices: choices(v, p) })],
    ["guided_grammar", (v, p) => grammarSpec(str(v, p))],
  ];
  for (const [key, spec] of guided) {
    if (given(body[key])) one({ spec: spec(body[key], key), param: key, root: key });
  }
  if (given(body.guided_json_object) && body.guided_json_object !== false) {
    one({ spec: { type: "json_object" }, param: "guided_json_object", root: "guided_json_object" });
  }
  return out;
}

/** llama-server's json_schema and grammar (an empty grammar or schema is no constraint, as there). */
function llamaServerFields(body: Json): Found {
  let out: Found;
  if (
    given(body.json_schema) &&
    !(isObject(body.json_schema) && Object.keys(body.json_schema).length === 0)
  ) {
    out = json(schemaValue(body.json_schema, "json_schema", false), "json_schema");
  }
  if (given(body.grammar) && body.grammar !== "") {
    const g: StructuredOutput = {
      spec: { type: "gbnf", grammar: str(body.grammar, "grammar") },
      param: "grammar",
      root: "grammar",
    };
    if (out) {
      throw badRequest(
        "grammar and json_schema both constrain the output: give only one of them",
        "grammar",
        "conflicting_fields",
      );
    }
    out = g;
  }
  return out;
}

/** TGI's parameters.grammar: {type: "json" | "json_schema", value: schema} or {type: "regex", value: pattern}. */
function tgiGrammar(g: unknown): Found {
  const param = "parameters.grammar";
  if (!given(g)) return undefined;
  if (!isObject(g)) throw badRequest(`${param} must be an object {type, value}`, param);
  const value = `${param}.value`;
  if (!given(g.value)) throw badRequest(`${value} is required`, value);
  switch (g.type) {
    case "json":
    case "json_schema":
      return json(schemaValue(g.value, value, true), param, value);
    case "regex":
      return { spec: { type: "regex", pattern: str(g.value, value) }, param, root: value };
    default:
      throw badRequest(
        `${param}.type must be "json" or "regex"; got ${JSON.stringify(g.type ?? null)}`,
        `${param}.type`,
      );
  }
}

/** Ollama's format: "json" (any JSON object) or a JSON schema; "" is none. */
function ollamaFormat(f: unknown): Found {
  if (!given(f) || f === "") return undefined;
  if (f === "json") return { spec: { type: "json_object" }, param: "format", root: "format" };
  if (typeof f === "string")
    throw badRequest(`format must be "json" or a JSON schema; got ${JSON.stringify(f)}`, "format");
  return json(schemaValue(f, "format", false), "format");
}

/** The Responses API's text.format: {type: "json_schema", name, schema, strict} or {type: "json_object"}. */
function responsesFormat(f: unknown): Found {
  const param = "text.format";
  if (!given(f)) return undefined;
  if (!isObject(f)) throw badRequest(`${param} must be an object such as {"type": "json_object"}`, param);
  switch (f.type) {
    case "text":
      return undefined;
    case "json_object":
      return { spec: { type: "json_object" }, param, root: param };
    case "json_schema":
      if (given(f.name) && typeof f.name !== "string")
        throw badRequest(`${param}.name must be a string`, `${param}.name`);
      if (!given(f.schema)) return { spec: { type: "json_object" }, param, root: param };
      return json(schemaValue(f.schema, `${param}.schema`, false), param, `${param}.schema`);
    default:
      throw badRequest(
        `${param}.type must be "text", "json_object" or "json_schema"; got ${JSON.stringify(f.type ?? null)}`,
        `${param}.type`,
      );
  }
}

/** The RPC GenerateRequest's response_format oneof (one key set). */
function rpcFormat(f: unknown): Found {
  const param = "response_format";
  if (!isObject(f)) return undefined;
  const p = (k: string) => `${param}.${k}`;
  if (given(f.json_schema))
    return json(schemaValue(f.json_schema, p("json_schema"), true), param, p("json_schema"));
  if (f.json_object === true) return { spec: { type: "json_object" }, param, root: param };
  if (given(f.regex))
    return { spec: { type: "regex", pattern: str(f.regex, p("regex")) }, param, root: p("regex") };
  if (given(f.choice)) {
    return {
      spec: { type: "choice", choices: choices(f.choice, p("choice.choices")) },
      param,
      root: p("choice.choices"),
    };
  }
  if (given(f.gbnf))
    return { spec: { type: "gbnf", grammar: str(f.gbnf, p("gbnf")) }, param, root: p("gbnf") };
  if (given(f.lark))
    return { spec: { type: "lark", grammar: str(f.lark, p("lark")) }, param, root: p("lark") };
  return undefined;
}
