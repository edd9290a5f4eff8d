import { describe, expect, it } from "vitest";
import { ApiError } from "../../src/server/errors.js";
import {
  callsEnforced,
  parseToolRequest,
  toolGrammar,
  toolStructuredOutput,
} from "../../src/server/tool-request.js";

const weather = {
  type: "function",
  function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } },
};
const time = { type: "function", function: { name: "get_time" } };

function refused(body: Record<string, unknown>): ApiError {
  try {
    parseToolRequest(body);
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    return e as ApiError;
  }
  throw new Error("not refused");
}

describe("tool fields", () => {
  it("defaults: auto with tools, parallel calls; none and no tools: nothing", () => {
    expect(parseToolRequest({ tools: [weather] })).toMatchObject({ choice: "auto", parallel: true });
    expect(parseToolRequest({})).toBeUndefined();
    expect(parseToolRequest({ tools: [], tool_choice: "none" })).toBeUndefined();
    expect(
      parseToolRequest({
        tools: [weather, time],
        tool_choice: { type: "function", function: { name: "get_time" } },
      }),
    ).toMatchObject({
      choice: { name: "get_time" },
    });
  });

  it("refuses by field: no name, a bad name, twice the same name, an unknown function, a choice without tools", () => {
    expect(refused({ tools: [{ type: "function", function: {} }] }).param).toBe("tools[0].function.name");
    expect(refused({ tools: [{ type: "function", function: { name: "has space" } }] }).param).toBe(
      "tools[0].function.name",
    );
    expect(refused({ tools: [{ type: "retrieval" }] }).param).toBe("tools[0].type");
    expect(refused({ tools: [weather, weather] }).message).toMatch(/given twice/);
    expect(
      refused({ tools: [weather], tool_choice: { type: "function", function: { name: "get_time" } } })
        .message,
    ).toMatch(/"get_time", which is not among tools \(get_weather\)/);
    expect(refused({ tool_choice: "required" }).param).toBe("tool_choice");
    expect(refused({ tools: "f" }).param).toBe("tools");
    expect(refused({ tools: [weather], parallel_tool_calls: 1 }).param).toBe("parallel_tool_calls");
  });
});

describe("the grammar of an enforced call", () => {
  it("none and auto: no grammar", () => {
    expect(toolGrammar(parseToolRequest({ tools: [weather] })!)).toBeUndefined();
    expect(callsEnforced(parseToolRequest({ tools: [weather] }))).toBe(false);
  });

  it("required: an array of calls to any tool, each name with its own parameters (empty object without)", () => {
    const r = parseToolRequest({ tools: [weather, time], tool_choice: "required" })!;
    expect(callsEnforced(r)).toBe(true);
    expect(toolGrammar(r)).toEqual({
      type: "json_schema",
      schema: {
        type: "array",
        minItems: 1,
        items: {
          anyOf: [
            {
              type: "object",
              properties: { name: { const: "get_weather" }, arguments: weather.function.parameters },
              required: ["name", "arguments"],
              additionalProperties: false,
            },
            {
              type: "object",
              properties: {
                name: { const: "get_time" },
                arguments: { type: "object", properties: {}, additionalProperties: false },
              },
              required: ["name", "arguments"],
              additionalProperties: false,
            },
          ],
        },
      },
    });
  });

  it("a named function without parallel calls: exactly one call to it", () => {
    const r = parseToolRequest({
      tools: [weather, time],
      tool_choice: { type: "function", function: { name: "get_weather" } },
      parallel_tool_calls: false,
    })!;
    const g = toolGrammar(r) as { schema: Record<string, unknown> };
    expect(g.schema.maxItems).toBe(1);
    expect((g.schema.items as { properties: { name: unknown } }).properties.name).toEqual({
      const: "get_weather",
    });
  });

  it("a parameters schema with references keeps them working: it moves under $defs, references rebased", () => {
    const tree = {
      type: "function",
      function: {
        name: "tree",
        parameters: {
          type: "object",
          properties: { root: { $ref: "#/$defs/node" } },
          $defs: {
            node: {
              type: "object",
              properties: { kids: { type: "array", items: { $ref: "#/$defs/node" } } },
            },
          },
        },
      },
    };
    const g = toolGrammar(parseToolRequest({ tools: [weather, tree], tool_choice: "required" })!) as {
      schema: { $defs: Record<string, unknown>; items: { anyOf: { properties: { arguments: unknown } }[] } };
    };
    expect(g.schema.items.anyOf[0]!.properties.arguments).toEqual(weather.function.parameters);
    expect(g.schema.items.anyOf[1]!.properties.arguments).toEqual({ $ref: "#/$defs/tool_1" });
    expect(g.schema.$defs.tool_1).toEqual({
      type: "object",
      properties: { root: { $ref: "#/$defs/tool_1/$defs/node" } },
      $defs: {
        node: {
          type: "object",
          properties: { kids: { type: "array", items: { $ref: "#/$defs/tool_1/$defs/node" } } },
        },
      },
    });
  });

  it("compiler errors name the tool's field", () => {
    const r = parseToolRequest({ tools: [weather, time], tool_choice: "required" })!;
    const so = toolStructuredOutput(r)!;
    expect(so.field("schema.items.anyOf[1].properties.arguments.properties.x.format")).toBe(
      "tools[1].function.parameters.properties.x.format",
    );
    const named = parseToolRequest({
      tools: [weather, time],
      tool_choice: { type: "function", function: { name: "get_time" } },
    })!;
    expect(toolStructuredOutput(named)!.field("schema.items.properties.arguments.patternProperties")).toBe(
      "tools[1].function.parameters.patternProperties",
    );
    expect(so.field("schema.minItems")).toBe("tools");
    expect(toolStructuredOutput(parseToolRequest({ tools: [weather] })!)).toBeUndefined();
  });
});
