import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TINY_RANDOM, testModel } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Lark grammars end to end: vLLM's `structured_outputs.grammar` and `guided_grammar` with Lark text,
 * through a real server on a random-weight model (llama-2-tiny-random writes noise on its own, so
 * every output in the language is the grammar's doing). Every output that finishes with `stop` is
 * checked by a recognizer written here (a RegExp for the regular grammars, recursive descent for
 * the arithmetic one); a bad Lark grammar is a 400 naming the field.
 */

type Json = Record<string, unknown>;

/** A bounded SELECT (the grammar forces an end): case-insensitive keywords, counted repetition. */
const SQL = `
start: "select"i " " columns " " "from"i " " NAME [" " "where"i " " NAME OP INT] ";"
columns: "*" | NAME ("," NAME)~0..2
OP: "=" | "<" | ">"
NAME: /[a-z_]{1,6}/
INT: /[0-9]{1,3}/
`;
const SQL_RE =
  /^(?i:select) (?:\*|[a-z_]{1,6}(?:,[a-z_]{1,6}){0,2}) (?i:from) [a-z_]{1,6}(?: (?i:where) [a-z_]{1,6}[=<>][0-9]{1,3})?;$/u;

/** key=value lines, one to three of them. */
const KV = `
start: pair (NEWLINE pair)~0..2
pair: KEY "=" value
?value: NUMBER | STRING
KEY: LCASE_LETTER ("_" | LCASE_LETTER)~0..7
NUMBER: DIGIT~1..4
STRING: "'" /[a-z ]{0,6}/ "'"
NEWLINE: "\\n"
%import common (LCASE_LETTER, DIGIT)
`;
const KV_RE =
  /^[a-z][_a-z]{0,7}=(?:[0-9]{1,4}|'[a-z ]{0,6}')(?:\n[a-z][_a-z]{0,7}=(?:[0-9]{1,4}|'[a-z ]{0,6}'))*$/;
const kvLines = (s: string) => s.split("\n").length <= 3;

/** Recursive arithmetic, Lark's style: left recursion, ?rules, aliases, ignored spaces. */
const ARITH = `
?start: sum
?sum: product | sum "+" product -> add | sum "-" product -> sub
?product: atom | product "*" atom -> mul
?atom: INT | "(" sum ")"
INT: /[0-9]{1,3}/
%ignore " "
`;
function arith(text: string): boolean {
  let i = 0;
  const sp = () => {
    while (text[i] === " ") i++;
  };
  const eat = (c: string) => {
    sp();
    if (text[i] !== c) return false;
    i++;
    return true;
  };
  const atom = (): boolean => {
    sp();
    const m = /^[0-9]{1,3}/.exec(text.slice(i));
    if (m) {
      i += m[0].length;
      return true;
    }
    return eat("(") && sum() && eat(")");
  };
  const product = (): boolean => {
    if (!atom()) return false;
    for (;;) {
      const save = i;
      if (!eat("*")) {
        i = save;
        return true;
      }
      if (!atom()) return false;
    }
  };
  const sum = (): boolean => {
    if (!product()) return false;
    for (;;) {
      const save = i;
      if (!eat("+") && !eat("-")) {
        i = save;
        return true;
      }
      if (!product()) return false;
    }
  };
  if (!sum()) return false;
  sp();
  return i === text.length;
}

let srv: TestServer;
let model: string;
const post = async (path: string, body: unknown) => {
  const res = await fetch(`${srv.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Json };
};

beforeAll(async () => {
  srv = await startTestServer({ backend: { kind: "local", modelPath: testModel(TINY_RANDOM) } });
  model = srv.server.ctx.opts.modelName;
});
afterAll(async () => {
  await srv?.close();
});

describe("Lark grammars end to end (vLLM's fields, random weights)", () => {
  it("every stop output is in the grammar's language: greedy and sampled, n > 1, chat and completions", async () => {
    const grammars: [string, string, (s: string) => boolean, boolean][] = [
      ["sql", SQL, (s) => SQL_RE.test(s), true],
      ["kv", KV, (s) => KV_RE.test(s) && kvLines(s), true],
      ["arith", ARITH, arith, false],
    ];
    const jobs = grammars.flatMap(([name, grammar, inLanguage, bounded]) =>
      [0, 1, 2, 3].map(async (variant) => {
        const sampled = variant % 2 === 1;
        const chat = variant < 2;
        const common = {
          model,
          max_tokens: 80,
          n: sampled ? 3 : 1,
          temperature: sampled ? 1 : 0,
          seed: sampled ? variant : undefined,
        };
        const r = chat
          ? await post("/v1/chat/completions", {
              ...common,
              messages: [{ role: "user", content: `Write ${name} number ${variant}.` }],
              structured_outputs: { grammar },
            })
          : await post("/v1/completions", {
              ...common,
              prompt: `${name} ${variant}:`,
              guided_grammar: grammar,
            });
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        const choices = r.body.choices as {
          message?: { content: string };
          text?: string;
          finish_reason: string;
        }[];
        expect(choices.length).toBe(common.n);
        let stops = 0;
        for (const c of choices) {
          const text = c.message?.content ?? c.text ?? "";
          if (c.finish_reason === "stop") {
            stops++;
            expect(inLanguage(text), `${name} ${variant}: ${JSON.stringify(text)}`).toBe(true);
          } else expect(c.finish_reason).toBe("length");
        }
        return bounded ? stops : 0;
      }),
    );
    const boundedStops = (await Promise.all(jobs)).reduce((a, b) => a + b, 0);
    // The bounded grammars force an end well within 80 tokens: every one of their outputs stops.
    expect(boundedStops).toBe(2 * (1 + 3 + 1 + 3));
  });

  it("a bad Lark grammar is a 400 naming the field and the construct", async () => {
    const r = await post("/v1/chat/completions", {
      model,
      messages: [{ role: "user", content: "x" }],
      structured_outputs: { grammar: 'start: item+\nitem: "a" | "b" {x}' },
    });
    expect(r.status).toBe(400);
    const err = r.body.error as { param: string; code: string; message: string };
    expect(err.param).toBe("structured_outputs.grammar");
    expect(err.code).toBe("invalid_grammar");
    expect(err.message).toMatch(
      /^structured_outputs\.grammar: \{x\} is not a repetition count \{m,n\} \(templates are not supported\) \(line 2, column 17\)/,
    );
    const g = await post("/v1/completions", {
      model,
      prompt: "x",
      guided_grammar: "start: /a(?<=a)/",
    });
    expect(g.status).toBe(400);
    expect((g.body.error as { param: string }).param).toBe("guided_grammar");
    expect((g.body.error as { message: string }).message).toMatch(/look-around/);
    const s = await engineStats(srv);
    expect(s).toMatchObject({ running: 0, waiting: 0 });
  });
});
