import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import type { GrammarCompiler } from "../../src/engine/grammars.js";
import { ModelRunner, type RunnerItem } from "../../src/engine/runner.js";
import { SimRunner } from "../../src/engine/sim-runner.js";
import {
  type CompiledGrammar,
  GrammarError,
  type GrammarMatcher,
  type GrammarSpec,
  type GrammarVocab,
  grammarVocab,
} from "../../src/grammar/constraint.js";
import { loadModel } from "../../src/model/model.js";
import type { RequestSpec } from "../../src/protocol/request.js";
import { type Arrival, drive, expectNoLeaks } from "../helpers/engine.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/**
 * Engine mechanics of constrained decoding with the real stories260K model: masks in every
 * sampling mode, the grammar's end as `stop`, max_tokens as `length`, jump-forward, preemption
 * with recompute, aborts, stop strings, logprobs under a mask. The grammar here is a TEST DOUBLE of
 * the GrammarMatcher boundary (a choice among strings, over the vocabulary's bytes): it exercises
 * the engine, not a compiler; end-to-end tests use the real compiler.
 */

const model = loadModel(testModel(STORIES_260K));
const tok = model.tokenizer;
const vocab = grammarVocab(tok);
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Test double: exactly one of `choices`, byte by byte; forced tokens by longest match. */
class ChoiceMatcher implements GrammarMatcher {
  fills = 0;
  constructor(
    private readonly g: ChoiceGrammar,
    private text: Uint8Array = new Uint8Array(0),
    private ended = false,
    private readonly history: { text: Uint8Array; ended: boolean }[] = [],
  ) {}
  private live(text: Uint8Array): Uint8Array[] {
    return this.g.choices.filter((c) => c.length >= text.length && text.every((b, i) => c[i] === b));
  }
  private extends(bytes: Uint8Array): boolean {
    if (bytes.length === 0) return false;
    const next = new Uint8Array(this.text.length + bytes.length);
    next.set(this.text);
    next.set(bytes, this.text.length);
    return this.live(next).length > 0;
  }
  private complete(): boolean {
    return this.g.choices.some((c) => c.length === this.text.length && this.live(this.text).includes(c));
  }
  fillMask(mask: Uint32Array): void {
    this.fills++;
    mask.fill(0);
    if (this.ended) return;
    for (let t = 0; t < this.g.vocab.vocabSize; t++) {
      const ok = this.g.vocab.eogTokens.has(t)
        ? this.complete()
        : !this.g.vocab.isControl(t) && this.extends(this.g.bytes[t]!);
      if (ok) mask[t >>> 5]! |= 1 << (t & 31);
    }
  }
  accept(token: number): boolean {
    if (this.ended) return false;
    if (this.g.vocab.eogTokens.has(token)) {
      if (!this.complete()) return false;
      this.history.push({ text: this.text, ended: this.ended });
      this.ended = true;
      return true;
    }
    const b = this.g.bytes[token]!;
    if (this.g.vocab.isControl(token) || !this.extends(b)) return false;
    this.history.push({ text: this.text, ended: this.ended });
    const next = new Uint8Array(this.text.length + b.length);
    next.set(this.text);
    next.set(b, this.text.length);
    this.text = next;
    return true;
  }
  isTerminated(): boolean {
    return this.ended || (this.complete() && this.live(this.text).length === 1);
  }
  canEnd(): boolean {
    return this.complete();
  }
  forcedTokens(max: number): number[] {
    const live = this.live(this.text);
    if (this.ended || live.length === 0 || this.complete()) return [];
    // The bytes every live choice continues with.
    let common = live[0]!.subarray(this.text.length);
    for (const c of live) {
      const rest = c.subarray(this.text.length);
      let n = 0;
      while (n < common.length && n < rest.length && common[n] === rest[n]) n++;
      common = common.subarray(0, n);
    }
    const out: number[] = [];
    let at = 0;
    while (at < common.length && out.length < max) {
      let best = -1;
      let bestLen = 0;
      for (let t = 0; t < this.g.vocab.vocabSize; t++) {
        const b = this.g.bytes[t]!;
        if (this.g.vocab.isControl(t) || b.length <= bestLen || at + b.length > common.length) continue;
        if (b.every((x, i) => common[at + i] === x)) {
          best = t;
          bestLen = b.length;
        }
      }
      if (best < 0) break;
      out.push(best);
      at += bestLen;
    }
    return out;
  }
  rollback(n: number): void {
    for (let i = 0; i < n; i++) {
      const h = this.history.pop()!;
      this.text = h.text;
      this.ended = h.ended;
    }
  }
  clone(): GrammarMatcher {
    return new ChoiceMatcher(this.g, this.text, this.ended, [...this.history]);
  }
}

class ChoiceGrammar implements CompiledGrammar {
  readonly choices: Uint8Array[];
  readonly bytes: Uint8Array[];
  readonly matchers: ChoiceMatcher[] = [];
  constructor(
    readonly vocab: GrammarVocab,
    choices: string[],
  ) {
    this.choices = choices.map((c) => enc.encode(c));
    this.bytes = Array.from({ length: vocab.vocabSize }, (_, t) => vocab.tokenBytes(t));
  }
  matcher(): GrammarMatcher {
    const m = new ChoiceMatcher(this);
    this.matchers.push(m);
    return m;
  }
}

/** A compiler for the test double: `choice` specs only; a choice list with "" is a GrammarError. */
function choiceCompiler(compiled: ChoiceGrammar[] = []): GrammarCompiler {
  return (spec: GrammarSpec) => {
    if (spec.type !== "choice") throw new GrammarError("", `${spec.type} is not in the test double`);
    const bad = spec.choices.findIndex((c) => c.length === 0);
    if (bad >= 0) throw new GrammarError(`choices[${bad}]`, "must not be empty");
    const g = new ChoiceGrammar(vocab, spec.choices);
    compiled.push(g);
    return g;
  };
}

const CHOICES = [
  "Once upon a time, there was a little dog.",
  "Once upon a time, there was a big cat.",
  "The end.",
  "Lily and Tom went to the park.",
];
const grammar: GrammarSpec = { type: "choice", choices: CHOICES };
const bos = tok.bos!;
const prompt = (i: number) => [bos, ...tok.encode(`Story number ${i}: `, { addSpecial: false })];

function engineWith(
  o: { numBlocks?: number; jumpForwardMaxBatch?: number; compiled?: ChoiceGrammar[] } = {},
) {
  return new EngineCore(new ModelRunner(model, o.numBlocks ?? 256), {
    tokenizer: tok,
    clock: new VirtualClock(),
    maxNumBatchedTokens: 128,
    grammars: choiceCompiler(o.compiled),
    jumpForwardMaxBatch: o.jumpForwardMaxBatch,
  });
}

/** logit_bias for every token whose text starts with `prefix`. */
const biasFor = (prefix: string, b: number): [number, number][] =>
  Array.from({ length: vocab.vocabSize }, (_, t) => t)
    .filter((t) => !vocab.isControl(t) && dec.decode(vocab.tokenBytes(t)).startsWith(prefix))
    .map((t) => [t, b]);

const MODES: Record<string, RequestSpec["sampling"]> = {
  greedy: { temperature: 0 },
  temperature: { temperature: 1.5, seed: 1 },
  topK: { temperature: 1, topK: 3, seed: 2 },
  topP: { temperature: 1, topP: 0.5, seed: 3 },
  minP: { temperature: 1, minP: 0.2, seed: 4 },
  penalties: {
    temperature: 0.7,
    repetitionPenalty: 1.5,
    presencePenalty: 1,
    frequencyPenalty: 1,
    seed: 5,
  },
  // A ban on the token the unconstrained model likes most here, and a push toward "T".
  logitBias: {
    temperature: 0,
    logitBias: new Map([...biasFor("O", -100), ...biasFor("T", 5)]),
  },
};

describe("constrained decoding in the engine (test-double choice grammar, stories260K)", () => {
  it("every sampling mode only produces one of the choices, ending with stop", () => {
    const arrivals: Arrival[] = [];
    Object.entries(MODES).forEach(([name, sampling], m) => {
      for (let k = 0; k < 3; k++) {
        arrivals.push({
          at: k,
          spec: { id: `${name}-${k}`, prompt: prompt(m * 3 + k), maxTokens: 64, sampling, grammar },
        });
      }
    });
    const engine = engineWith();
    const r = drive(engine, arrivals);
    for (const { spec } of arrivals) {
      expect(r.finish.get(spec.id)!.reason, spec.id).toBe("stop");
      expect(CHOICES, spec.id).toContain(r.text.get(spec.id));
      expect(
        dec.decode(Uint8Array.from(r.tokens.get(spec.id)!.flatMap((t) => [...vocab.tokenBytes(t)]))),
      ).toBe(r.text.get(spec.id));
    }
    // The ban and the bias steer away from "Once…": proof the mask composes with logit_bias.
    for (let k = 0; k < 3; k++) expect(r.text.get(`logitBias-${k}`)).toMatch(/^T/);
    expectNoLeaks(engine);
  });

  it("unconstrained requests beside constrained ones never get a mask and are unchanged", () => {
    const free = { id: "free", prompt: prompt(1), maxTokens: 24, sampling: { temperature: 0 } };
    const alone = drive(engineWith(), [{ at: 0, spec: free }]).tokens.get("free");
    const compiled: ChoiceGrammar[] = [];
    const engine = engineWith({ compiled });
    const seen: RunnerItem[] = [];
    const execute = engine.runner.execute.bind(engine.runner);
    engine.runner.execute = (items) => {
      seen.push(...items);
      return execute(items);
    };
    const r = drive(engine, [
      { at: 0, spec: free },
      { at: 0, spec: { id: "c", prompt: prompt(2), maxTokens: 64, sampling: { temperature: 0 }, grammar } },
    ]);
    expect(r.tokens.get("free")).toEqual(alone);
    const freePrompt = prompt(1);
    const isFree = (it: RunnerItem) => freePrompt.every((t, i) => it.history[i] === t);
    expect(seen.filter(isFree).length).toBeGreaterThan(10);
    expect(seen.filter((it) => it.grammar !== undefined).length).toBeGreaterThan(0);
    // Masks only where a constrained sequence samples: never for "free", never for a prefill chunk.
    for (const it of seen) {
      if (isFree(it)) expect(it.grammar).toBeUndefined();
      if (it.grammar) expect(it.logits).toBe("last");
    }
    const fills = compiled.flatMap((g) => g.matchers).reduce((s, m) => s + m.fills, 0);
    expect(fills).toBe(seen.filter((it) => it.grammar).length);
  });

  it("max_tokens ends a constrained request with length and the partial output", () => {
    const engine = engineWith({ jumpForwardMaxBatch: 0 });
    const r = drive(engine, [
      {
        at: 0,
        spec: { id: "short", prompt: prompt(3), maxTokens: 3, sampling: { temperature: 0 }, grammar },
      },
    ]);
    expect(r.finish.get("short")!.reason).toBe("length");
    expect(r.tokens.get("short")).toHaveLength(3);
    expect(CHOICES.some((c) => c.startsWith(r.text.get("short")!))).toBe(true);
    expectNoLeaks(engine);
  });

  it("jump-forward accepts forced tokens without sampling them and computes them in one step", () => {
    const spec = (id: string) => ({
      id,
      prompt: prompt(4),
      maxTokens: 64,
      sampling: { temperature: 0 },
      grammar: { type: "choice", choices: [CHOICES[0]!, CHOICES[1]!] } as GrammarSpec,
    });
    const slow = engineWith({ jumpForwardMaxBatch: 0 });
    const a = drive(slow, [{ at: 0, spec: spec("a") }]);
    const fast = engineWith();
    let reported = 0;
    const step = fast.step.bind(fast);
    fast.step = () => {
      const events = step();
      reported += fast.lastStep.forcedTokens;
      return events;
    };
    const b = drive(fast, [{ at: 0, spec: spec("b") }]);
    expect([CHOICES[0], CHOICES[1]]).toContain(a.text.get("a"));
    expect([CHOICES[0], CHOICES[1]]).toContain(b.text.get("b"));
    expect(slow.totalForcedTokens).toBe(0);
    // "Once upon a time, there was a " is forced from the start, "little dog." or "big cat." after the choice.
    expect(fast.totalForcedTokens).toBeGreaterThan(5);
    // Every forced token shows in a step's stats (what the metrics count), the start's too.
    expect(reported).toBe(fast.totalForcedTokens);
    expect(b.finish.get("b")!.completionTokens).toBe(b.tokens.get("b")!.length);
    expect(fast.steps).toBeLessThan(slow.steps);
    // With one token sampled (the branch) and the rest forced, the whole answer takes about 3 steps.
    expect(fast.steps).toBeLessThanOrEqual(4);
    expectNoLeaks(fast);
  });

  it("jump-forward only while the batch is small: above jumpForwardMaxBatch each forced token takes its own step", () => {
    const arrivals: Arrival[] = [0, 1].map((i) => ({
      at: 0,
      spec: { id: `s${i}`, prompt: prompt(5 + i), maxTokens: 64, sampling: { temperature: 0 }, grammar },
    }));
    const run = (jumpForwardMaxBatch: number) => {
      const engine = engineWith({ jumpForwardMaxBatch });
      const decodeRows: number[] = [];
      const execute = engine.runner.execute.bind(engine.runner);
      engine.runner.execute = (items) => {
        for (const it of items) if (it.pos > 0) decodeRows.push(it.tokens.length); // prompts are one chunk
        return execute(items);
      };
      const r = drive(engine, arrivals);
      expectNoLeaks(engine);
      return { engine, r, decodeRows };
    };
    const gated = run(1);
    const open = run(2);
    // (The first request, added alone, takes its forced start with its prompt either way.)
    expect(open.engine.totalForcedTokens).toBeGreaterThan(gated.engine.totalForcedTokens + 5);
    // Gated, every step past the prompts computes one token per sequence.
    expect(Math.max(...gated.decodeRows)).toBe(1);
    expect(Math.max(...open.decodeRows)).toBeGreaterThan(1);
    for (const { spec } of arrivals) {
      expect(gated.r.text.get(spec.id)).toBe(open.r.text.get(spec.id));
      expect(gated.r.finish.get(spec.id)!.reason).toBe("stop");
    }
    expect(gated.engine.steps).toBeGreaterThan(open.engine.steps);
  });

  it("preemption with recompute: the same greedy outputs with a KV cache that forces preemptions", () => {
    const arrivals: Arrival[] = Array.from({ length: 12 }, (_, i) => ({
      at: i % 3,
      spec: {
        id: `p${i}`,
        prompt: [
          bos,
          ...tok.encode(`${"Tom and Lily played. ".repeat(2 + (i % 4))}${i}`, { addSpecial: false }),
        ],
        maxTokens: 64,
        sampling: i % 2 === 0 ? { temperature: 0 } : { temperature: 1, seed: i },
        grammar,
      },
    }));
    const roomy = drive(engineWith({ jumpForwardMaxBatch: 0 }), arrivals);
    const small = engineWith({ numBlocks: 14, jumpForwardMaxBatch: 0 });
    const tight = drive(small, arrivals);
    expect(small.scheduler.totalPreemptions).toBeGreaterThan(0);
    for (const { spec } of arrivals) {
      expect(tight.finish.get(spec.id)!.reason, spec.id).toBe("stop");
      expect(tight.tokens.get(spec.id), spec.id).toEqual(roomy.tokens.get(spec.id));
      expect(CHOICES).toContain(tight.text.get(spec.id));
    }
    expectNoLeaks(small);
    // And with jump-forward: still valid, still no leaks.
    const small2 = engineWith({ numBlocks: 14 });
    const jf = drive(small2, arrivals);
    for (const { spec } of arrivals) expect(CHOICES).toContain(jf.text.get(spec.id));
    expectNoLeaks(small2);
  });

  it("aborts of constrained requests free everything; stop strings still apply", () => {
    const engine = engineWith({ jumpForwardMaxBatch: 0 });
    for (let i = 0; i < 4; i++) {
      engine.add({ id: `x${i}`, prompt: prompt(i), maxTokens: 64, sampling: { temperature: 0 }, grammar });
    }
    engine.add({
      id: "stopped",
      prompt: prompt(9),
      maxTokens: 64,
      sampling: { temperature: 0, logitBias: new Map(biasFor("T", 20)) },
      stop: [" end"],
      grammar,
    });
    let text = "";
    let finish: string | undefined;
    for (let s = 0; s < 200 && engine.hasWork(); s++) {
      if (s === 3) for (let i = 0; i < 4; i++) engine.abort(`x${i}`);
      for (const e of engine.step()) {
        if (e.id === "stopped") {
          text += e.text;
          if (e.finish) finish = e.finish.reason;
        } else if (e.finish) expect(e.finish.reason).toBe("abort");
      }
    }
    expect(finish).toBe("stop");
    expect(text).toBe("The");
    expectNoLeaks(engine);
  });

  it("logprobs under a mask: the allowed distribution, forced tokens with logprob 0", () => {
    const engine = engineWith();
    const logprobs: { token: number; logprob: number; topLogprobs: { token: number; logprob: number }[] }[] =
      [];
    engine.add({
      id: "lp",
      prompt: prompt(5),
      maxTokens: 64,
      sampling: { temperature: 0, logprobs: 5 },
      grammar: { type: "choice", choices: ["The end.", "Lily and Tom went to the park."] },
    });
    const tokens: number[] = [];
    while (engine.hasWork()) {
      for (const e of engine.step()) {
        tokens.push(...e.tokens);
        logprobs.push(...(e.logprobs ?? []));
      }
    }
    expect(logprobs).toHaveLength(tokens.length);
    // The first token is a choice between "T…" and "L…" (sampled); the rest are forced.
    const first = logprobs[0]!;
    expect(first.logprob).toBeLessThan(0);
    const firsts = first.topLogprobs.map((t) => dec.decode(vocab.tokenBytes(t.token)));
    for (const s of firsts)
      expect("The end.".startsWith(s) || "Lily and Tom went to the park.".startsWith(s)).toBe(true);
    const mass = first.topLogprobs.reduce((s, t) => s + Math.exp(t.logprob), 0);
    expect(mass).toBeLessThanOrEqual(1 + 1e-6);
    for (const lp of logprobs.slice(1)) {
      expect(lp.logprob).toBe(0);
      expect(lp.topLogprobs).toEqual([{ token: lp.token, logprob: 0 }]);
    }
  });

  it("a grammar that cannot compile is refused when added, naming the field; nothing is held", () => {
    const engine = engineWith();
    expect(() =>
      engine.add({
        id: "bad",
        prompt: prompt(6),
        maxTokens: 8,
        grammar: { type: "choice", choices: ["a", ""] },
      }),
    ).toThrow(GrammarError);
    try {
      engine.add({
        id: "bad2",
        prompt: prompt(6),
        maxTokens: 8,
        grammar: { type: "choice", choices: ["a", ""] },
      });
    } catch (e) {
      expect((e as GrammarError).field).toBe("choices[1]");
    }
    expectNoLeaks(engine);
    // Without a tokenizer (ids only) a grammar cannot be applied at all.
    const bare = new EngineCore(new SimRunner({ numBlocks: 16, vocabSize: 100 }));
    expect(() => bare.add({ id: "g", prompt: [1, 2], maxTokens: 4, grammar })).toThrow(GrammarError);
  });

  it("the simulated runner honours the mask too", () => {
    const engine = new EngineCore(
      new SimRunner({ numBlocks: 64, vocabSize: model.config.vocabSize, avoid: tok.eogTokens }),
      { tokenizer: tok, clock: new VirtualClock(), grammars: choiceCompiler(), jumpForwardMaxBatch: 0 },
    );
    const arrivals: Arrival[] = Array.from({ length: 6 }, (_, i) => ({
      at: i,
      spec: { id: `s${i}`, prompt: prompt(i), maxTokens: 64, grammar },
    }));
    const r = drive(engine, arrivals);
    for (const { spec } of arrivals) {
      expect(r.finish.get(spec.id)!.reason).toBe("stop");
      expect(CHOICES).toContain(r.text.get(spec.id));
    }
    expectNoLeaks(engine);
  });
});
