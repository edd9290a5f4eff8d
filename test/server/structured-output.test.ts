import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GrammarError } from "../../src/grammar/constraint.js";
import { ApiError } from "../../src/server/errors.js";
import { grammarError, structuredOutput } from "../../src/server/structured-output.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * structured-output.ts, the one mapping from every protocol's structured-output field to a
 * GrammarSpec: what each field becomes, conflicts, shapes refused by name; and, through a real
 * server, a spec the engine cannot compile is a fast 400 naming the request's field on every route,
 * leaving nothing behind.
 */

const schema = { type: "object", properties: { name: { type: "string" } }, required: ["name"] };

describe("structuredOutput: request fields → GrammarSpec", () => {
  it("OpenAI's response_format", () => {
    expect(structuredOutput({ response_format: { type: "text" } }, "openai")).toBeUndefined();
    expect(structuredOutput({}, "openai")).toBeUndefined();
    expect(structuredOutput({ response_format: { type: "json_object" } }, "openai")).toEqual({
      spec: { type: "json_object" },
      param: "response_format",
      root: "response_format",
    });
    expect(
      structuredOutput(
        { response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } } },
        "openai",
      ),
    ).toEqual({
      spec: { type: "json_schema", schema },
      param: "response_format",
      root: "response_format.json_schema.schema",
    });
  });

  it("vLLM's structured_outputs and guided_* (a JSON schema may be a JSON string; grammars are GBNF or Lark)", () => {
    const so = (v: Record<string, unknown>) => structuredOutput({ structured_outputs: v }, "openai")?.spec;
    expect(so({ json: schema })).toEqual({ type: "json_schema", schema });
    expect(so({ json: JSON.stringify(schema) })).toEqual({ type: "json_schema", schema });
    expect(so({ regex: "[a-z]+" })).toEqual({ type: "regex", pattern: "[a-z]+" });
    expect(so({ choice: ["yes", "no"] })).toEqual({ type: "choice", choices: ["yes", "no"] });
    expect(so({ grammar: 'root ::= "a" | "b"' })).toEqual({ type: "gbnf", grammar: 'root ::= "a" | "b"' });
    expect(so({ grammar: 'start: "a" | "b"' })).toEqual({ type: "lark", grammar: 'start: "a" | "b"' });
    // vLLM's test: a `::=` only in a comment (# or //) does not make a grammar GBNF
    const commented = 'start: "a" // not root ::= "b"\n# x ::= y';
    expect(so({ grammar: commented })).toEqual({ type: "lark", grammar: commented });
    expect(so({ grammar: '# Lark\nroot ::= "a"' })).toEqual({
      type: "gbnf",
      grammar: '# Lark\nroot ::= "a"',
    });
    expect(so({ json_object: true })).toEqual({ type: "json_object" });
    expect(so({ regex: "a", backend: "xgrammar" })).toEqual({ type: "regex", pattern: "a" });
    const g = (body: Record<string, unknown>) => structuredOutput(body, "openai");
    expect(g({ guided_json: schema })).toMatchObject({
      spec: { type: "json_schema", schema },
      param: "guided_json",
    });
    expect(g({ guided_regex: "\\d+" })?.spec).toEqual({ type: "regex", pattern: "\\d+" });
    expect(g({ guided_choice: ["a", "b"] })?.spec).toEqual({ type: "choice", choices: ["a", "b"] });
    expect(g({ guided_grammar: 'root ::= "x"' })?.spec).toEqual({ type: "gbnf", grammar: 'root ::= "x"' });
  });

  it("llama-server's json_schema and grammar (empty ones are no constraint), on its routes and the OpenAI ones", () => {
    for (const dialect of ["openai", "llama-server"] as const) {
      expect(structuredOutput({ json_schema: schema }, dialect)?.spec).toEqual({
        type: "json_schema",
        schema,
      });
      expect(structuredOutput({ grammar: 'root ::= "a"' }, dialect)?.spec).toEqual({
        type: "gbnf",
        grammar: 'root ::= "a"',
      });
      expect(structuredOutput({ grammar: "", json_schema: {} }, dialect)).toBeUndefined();
    }
    expect(
      structuredOutput({ response_format: { type: "json_object", schema } }, "llama-server")?.spec,
    ).toEqual({
      type: "json_schema",
      schema,
    });
  });

  it("TGI's parameters.grammar, Ollama's format, the Responses API's text.format, the RPC's response_format", () => {
    expect(structuredOutput({ parameters: { grammar: { type: "json", value: schema } } }, "tgi")).toEqual({
      spec: { type: "json_schema", schema },
      param: "parameters.grammar",
      root: "parameters.grammar.value",
    });
    expect(
      structuredOutput({ parameters: { grammar: { type: "regex", value: "a|b" } } }, "tgi")?.spec,
    ).toEqual({
      type: "regex",
      pattern: "a|b",
    });
    expect(structuredOutput({ format: "json" }, "ollama")?.spec).toEqual({ type: "json_object" });
    expect(structuredOutput({ format: schema }, "ollama")?.spec).toEqual({ type: "json_schema", schema });
    expect(structuredOutput({ format: "" }, "ollama")).toBeUndefined();
    expect(
      structuredOutput(
        { text: { format: { type: "json_schema", name: "p", schema, strict: true } } },
        "responses",
      ),
    ).toEqual({ spec: { type: "json_schema", schema }, param: "text.format", root: "text.format.schema" });
    expect(structuredOutput({ text: { format: { type: "json_object" } } }, "responses")?.spec).toEqual({
      type: "json_object",
    });
    expect(
      structuredOutput({ response_format: { json_schema: JSON.stringify(schema) } }, "rpc")?.spec,
    ).toEqual({
      type: "json_schema",
      schema,
    });
    expect(structuredOutput({ response_format: { choice: ["x", "y"] } }, "rpc")?.spec).toEqual({
      type: "choice",
      choices: ["x", "y"],
    });
    expect(structuredOutput({ response_format: {} }, "rpc")).toBeUndefined();
  });

  it("two fields that constrain the output are a 400 naming the second; so are fields a dialect does not have", () => {
    const conflict = (body: Record<string, unknown>, param: string) => {
      try {
        structuredOutput(body, "openai");
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(ApiError);
        expect(e).toMatchObject({ status: 400, param, code: "conflicting_fields" });
      }
    };
    conflict({ response_format: { type: "json_object" }, guided_regex: "a" }, "guided_regex");
    conflict({ guided_json: schema, guided_choice: ["a"] }, "guided_choice");
    conflict({ structured_outputs: { json: schema }, json_schema: schema }, "json_schema");
    conflict({ grammar: 'root ::= "a"', json_schema: schema }, "grammar");
    // Other protocols' fields are no concern of a dialect that does not have them.
    expect(structuredOutput({ format: "json" }, "openai")).toBeUndefined();
  });

  it("a GrammarError's field (the spec's) becomes the request's field", () => {
    const so = structuredOutput(
      { response_format: { type: "json_schema", json_schema: { name: "p", schema } } },
      "openai",
    )!;
    const at = (field: string) => grammarError(new GrammarError(field, "why"), so).param;
    expect(at("schema.properties.name.format")).toBe(
      "response_format.json_schema.schema.properties.name.format",
    );
    expect(at("schema")).toBe("response_format.json_schema.schema");
    expect(at("")).toBe("response_format");
    const choice = structuredOutput({ guided_choice: ["a", ""] }, "openai")!;
    const e = grammarError(new GrammarError("choice[1]", "must not be empty"), choice);
    expect(e).toMatchObject({ status: 400, param: "guided_choice[1]", code: "invalid_grammar" });
    expect(e.message).toBe("guided_choice[1]: must not be empty");
  });
});

describe("a grammar the engine cannot compile, through a real server", () => {
  let srv: TestServer;
  let model: string;
  beforeAll(async () => {
    srv = await startTestServer();
    model = srv.server.ctx.opts.modelName;
  });
  afterAll(async () => {
    await srv?.close();
  });

  const post = async (path: string, body: unknown) => {
    const res = await fetch(`${srv.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as { error: unknown } };
  };
  // An unbalanced group: no regex engine compiles it.
  const BAD = "([a-z]+";

  it("is a 400 naming the request's field on every route, whole or streamed, with n > 1", async () => {
    const cases: [string, unknown, unknown][] = [
      ["/v1/completions", { model, prompt: "Once", max_tokens: 4, guided_regex: BAD }, "guided_regex"],
      [
        "/v1/completions",
        { model, prompt: "Once", max_tokens: 4, n: 3, stream: true, structured_outputs: { regex: BAD } },
        "structured_outputs.regex",
      ],
      [
        "/v1/chat/completions",
        { model, messages: [{ role: "user", content: "hi" }], max_tokens: 4, guided_regex: BAD },
        "guided_regex",
      ],
      [
        "/generate",
        { inputs: "Once", parameters: { grammar: { type: "regex", value: BAD } } },
        "parameters.grammar.value",
      ],
      [
        "/generate_stream",
        { inputs: "Once", parameters: { grammar: { type: "regex", value: BAD } } },
        "parameters.grammar.value",
      ],
    ];
    for (const [path, body, param] of cases) {
      const t0 = performance.now();
      const r = await post(path, body);
      expect(r.status, `${path} ${JSON.stringify(r.body)}`).toBe(400);
      expect(r.body.error, path).toMatchObject({
        type: "invalid_request_error",
        param,
        code: "invalid_grammar",
      });
      expect(performance.now() - t0).toBeLessThan(5000);
    }
    // llama-server's and Ollama's shapes.
    const llama = await post("/completion", { prompt: "Once", n_predict: 4, grammar: "root ::= (" });
    expect(llama.status).toBe(400);
    expect(llama.body.error).toMatchObject({ code: 400, type: "invalid_request_error" });
    expect((llama.body.error as { message: string }).message).toMatch(/^grammar/);
  });

  it("leaves nothing behind", async () => {
    const stats = await engineStats(srv);
    expect(stats).toMatchObject({ running: 0, waiting: 0, unfinished: 0, kvUsage: 0 });
    expect(srv.server.ctx.service.numInFlight).toBe(0);
    const ok = await post("/v1/completions", { model, prompt: "Once", max_tokens: 2 });
    expect(ok.status).toBe(200);
  });
});
