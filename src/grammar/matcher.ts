import type { Automaton } from "./automaton.js";
import { type CompiledGrammar, type GrammarMatcher, type GrammarVocab, maskWords } from "./constraint.js";
import { isPlainByte, PLAIN_RUN, type TokenTrie, type VocabIndex } from "./token-trie.js";

/**
 * The runtime of a compiled grammar. A parse position is a set of stacks (several when the
 * grammar is ambiguous so far), each stack a chain of automaton states: the top is where the
 * innermost rule is, the ones below are where each caller continues. Stacks are hash-consed to
 * ids, and sets of stacks to ids too, so a position is one integer, and the transition
 * (position, byte) → position is computed once and then read from a flat table. A mask walks the
 * token trie through that table and is cached per position: most steps of a generation revisit
 * a position (inside a string, between properties) and cost one copy.
 */
export class PositionTables {
  // stacks: (state, parent stack) pairs
  private readonly stState: number[] = [];
  private readonly stParent: number[] = [];
  private readonly stMap = new Map<number, number>();
  // positions: sorted stack ids whose top reads a byte, and whether the text may end here
  readonly posStacks: Int32Array[] = [];
  readonly posEnd: Uint8Array[] = [];
  private endFlags = new Uint8Array(1024);
  /** Positions of several stacks, by their sorted ids ("$" when the text may end). */
  private readonly posMap = new Map<string, number>();
  /** Positions of at most one stack, by stack id * 2 + may-end (-1 * 2 + 1 for the bare end). */
  private readonly posMap1 = new Map<number, number>();
  /** Positions of one stack that reads a byte, neither ends nor calls: stack id → position. */
  private readonly single = new Map<number, number>();
  /** next[p * 256 + b]: the position after byte b, -1 when b is not allowed, -2 not yet computed. */
  next = new Int32Array(256 * 1024).fill(-2);
  private readonly masks = new Map<number, Uint32Array>();
  readonly start: number;
  readonly trie: TokenTrie;

  constructor(
    readonly a: Automaton,
    readonly vocab: VocabIndex,
    readonly eog: Int32Array,
    private readonly maxMasks = 1024,
  ) {
    this.trie = vocab.all;
    this.start = this.close([this.stack(a.ruleStart(0), -1)]);
  }

  get positions(): number {
    return this.posStacks.length;
  }

  canEnd(p: number): boolean {
    return this.endFlags[p] === 1;
  }
  /** Nothing may follow: the text is complete and no byte can extend it. */
  isFinal(p: number): boolean {
    return this.posStacks[p]!.length === 0;
  }

  private stack(state: number, parent: number): number {
    const key = (parent + 1) * 0x4000_0000 + state;
    let id = this.stMap.get(key);
    if (id === undefined) {
      id = this.stState.length;
      this.stState.push(state);
      this.stParent.push(parent);
      this.stMap.set(key, id);
    }
    return id;
  }

  /** The position made of these stacks after following calls and returns that read no byte. */
  private close(seeds: number[]): number {
    const a = this.a;
    if (seeds.length === 1) {
      // The common case: one stack whose top reads a byte and neither ends nor calls.
      const st = seeds[0]!;
      const s = this.stState[st]!;
      if (a.hasBytes(s) && !a.accepts(s) && a.calls(s) === undefined) {
        const id = this.single.get(st);
        if (id !== undefined) return id;
      }
    }
    const seen = new Set<number>();
    const out: number[] = [];
    let end = 0;
    const work = seeds;
    while (work.length > 0) {
      const st = work.pop()!;
      if (seen.has(st)) continue;
      seen.add(st);
      const s = this.stState[st]!;
      const parent = this.stParent[st]!;
      if (a.hasBytes(s)) out.push(st);
      if (a.accepts(s)) {
        if (parent < 0) end = 1;
        else work.push(parent);
      }
      const c = a.calls(s);
      if (c)
        for (let i = 0; i < c.length; i += 2)
          work.push(this.stack(a.ruleStart(c[i]!), this.stack(c[i + 1]!, parent)));
    }
    if (out.length === 0 && !end) return -1;
    // One stack (the common case) is keyed by a number, several by a string.
    let key: string | undefined;
    let key1 = 0;
    let id: number | undefined;
    if (out.length <= 1) {
      key1 = (out.length === 0 ? -1 : out[0]!) * 2 + end;
      id = this.posMap1.get(key1);
    } else {
      out.sort((x, y) => x - y);
      key = `${out.join(",")}${end ? "$" : ""}`;
      id = this.posMap.get(key);
    }
    if (id === undefined) {
      id = this.posStacks.length;
      this.posStacks.push(Int32Array.from(out));
      if (key === undefined) this.posMap1.set(key1, id);
      else this.posMap.set(key, id);
      if (id >= this.endFlags.length) {
        const f = new Uint8Array(this.endFlags.length * 2);
        f.set(this.endFlags);
        this.endFlags = f;
        const n = new Int32Array(this.next.length * 2).fill(-2);
        n.set(this.next);
        this.next = n;
      }
      this.endFlags[id] = end;
      if (out.length === 1 && !end) {
        const s = this.stState[out[0]!]!;
        if (!a.accepts(s) && a.calls(s) === undefined) this.single.set(out[0]!, id);
      }
    }
    return id;
  }

  /** The position after byte `b` from position `p` (-1: not allowed). */
  step(p: number, b: number): number {
    const v = this.next[p * 256 + b]!;
    if (v !== -2) return v;
    const seeds: number[] = [];
    for (const st of this.posStacks[p]!) {
      const t = this.a.step(this.stState[st]!, b);
      if (t >= 0) seeds.push(this.stack(t, this.stParent[st]!));
    }
    const r = seeds.length === 0 ? -1 : this.close(seeds);
    this.next[p * 256 + b] = r;
    return r;
  }

  /** The position after these bytes, or -1. */
  walk(p: number, bytes: Uint8Array): number {
    for (let i = 0; i < bytes.length && p >= 0; i++) p = this.step(p, bytes[i]!);
    return p;
  }

  /** The allowed-token mask at position `p` (shared: do not modify). */
  mask(p: number): Uint32Array {
    let m = this.masks.get(p);
    if (m) return m;
    let trie = this.vocab.all;
    const run = this.plainRun(p);
    if (run > 0) {
      m = this.vocab.plainUpTo(run).slice();
      // Plain tokens longer than the run are in neither the mask nor the rest trie: walk them too
      // unless no plain byte may follow the run (the end of a length-bounded string).
      trie = run < this.runCap() && this.plainAfter(this.runEnd) ? this.vocab.all : this.vocab.rest;
    } else m = new Uint32Array(maskWords(trie.vocabSize));
    const { byte, depth, skip, tokStart, tokIds } = trie;
    const n = byte.length;
    const at = new Int32Array(trie.maxDepth + 1);
    at[0] = p;
    let next = this.next;
    let i = 0;
    while (i < n) {
      const d = depth[i]!;
      const from = at[d - 1]!;
      let q = next[from * 256 + byte[i]!]!;
      if (q === -2) {
        q = this.step(from, byte[i]!);
        next = this.next;
      }
      if (q < 0) {
        i = skip[i]!;
        continue;
      }
      at[d] = q;
      for (let k = tokStart[i]!, e = tokStart[i + 1]!; k < e; k++) {
        const t = tokIds[k]!;
        m[t >>> 5]! |= 1 << (t & 31);
      }
      i++;
    }
    if (this.canEnd(p)) for (const t of this.eog) m[t >>> 5]! |= 1 << (t & 31);
    if (this.masks.size >= this.maxMasks) this.masks.clear();
    this.masks.set(p, m);
    return m;
  }

  /** Whether every plain byte leads from `p` to one position; that position, or -1. */
  private plainNext(p: number): number {
    const stacks = this.posStacks[p]!;
    if (stacks.length === 1) {
      // One stack: compare the DFA's own transitions, then compute one position for them all.
      const s = this.stState[stacks[0]!]!;
      const t = this.a.step(s, 0x61);
      if (t < 0) return -1;
      for (let b = 0x20; b <= 0x7e; b++) if (isPlainByte(b) && this.a.step(s, b) !== t) return -1;
      const q = this.step(p, 0x61);
      const row = p * 256;
      for (let b = 0x20; b <= 0x7e; b++) if (isPlainByte(b)) this.next[row + b] = q;
      return q;
    }
    const q = this.step(p, 0x61);
    if (q < 0) return -1;
    for (let b = 0x20; b <= 0x7e; b++) if (isPlainByte(b) && this.step(p, b) !== q) return -1;
    return q;
  }

  /**
   * How many plain bytes in a row are allowed from `p` whatever they are (inside a string, a
   * length-bounded string, a `.*`): every plain token at most that long is allowed, so a mask need
   * walk only the other tokens. Counted up to the longest plain token; 0 when the run is shorter
   * than 1 or not uniform.
   */
  private plainRun(p: number): number {
    const max = this.runCap();
    let n = 0;
    let cur = p;
    while (n < max) {
      const q = this.plainNext(cur);
      if (q < 0) break;
      n++;
      if (q === cur) return max;
      cur = q;
    }
    this.runEnd = cur;
    return n;
  }
  /** The position at the end of the last run `plainRun` counted short of its cap. */
  private runEnd = -1;
  private runCap(): number {
    return Math.min(PLAIN_RUN, this.vocab.maxPlain);
  }
  /** Whether some plain byte may follow `p`. */
  private plainAfter(p: number): boolean {
    for (let b = 0x20; b <= 0x7e; b++) if (isPlainByte(b) && this.step(p, b) >= 0) return true;
    return false;
  }

  /** The single byte that may follow `p`, or -1 when there is a choice (or none, or the text may end). */
  forcedByte(p: number): number {
    if (this.canEnd(p)) return -1;
    let only = -1;
    for (let b = 0; b < 256; b++) {
      if (this.step(p, b) >= 0) {
        if (only >= 0) return -1;
        only = b;
      }
    }
    return only;
  }
}

/** A compiled grammar: the automaton, the vocabulary's trie and the shared position tables. */
export class Compiled implements CompiledGrammar {
  private tables: PositionTables;
  constructor(
    readonly automaton: Automaton,
    readonly index: VocabIndex,
    readonly vocab: GrammarVocab,
    private readonly maxPositions = 50_000,
  ) {
    this.tables = this.fresh();
  }
  private fresh(): PositionTables {
    return new PositionTables(this.automaton, this.index, Int32Array.from(this.vocab.eogTokens));
  }
  matcher(): GrammarMatcher {
    // A long-lived grammar's tables grow with every new position; past the bound, new matchers
    // start on fresh tables (the old ones live as long as the matchers that use them).
    if (this.tables.positions > this.maxPositions) this.tables = this.fresh();
    return new Matcher(this.tables, [this.tables.start], false);
  }
}

export class Matcher implements GrammarMatcher {
  constructor(
    private readonly t: PositionTables,
    /** The position before the first token, then after each accepted token. */
    private readonly hist: number[],
    /** An end-of-generation token was accepted (it is the last entry of hist). */
    private ended: boolean,
  ) {}

  private get pos(): number {
    return this.hist[this.hist.length - 1]!;
  }

  fillMask(mask: Uint32Array): void {
    if (this.ended) mask.fill(0);
    else mask.set(this.t.mask(this.pos));
  }

  accept(token: number): boolean {
    if (this.ended || token < 0 || token >= this.t.trie.vocabSize) return false;
    const p = this.pos;
    if (this.t.eog.includes(token)) {
      if (!this.t.canEnd(p)) return false;
      this.hist.push(p);
      this.ended = true;
      return true;
    }
    const bytes = this.t.trie.bytes[token]!;
    if (bytes.length === 0) return false;
    const q = this.t.walk(p, bytes);
    if (q < 0) return false;
    this.hist.push(q);
    return true;
  }

  isTerminated(): boolean {
    return this.ended || this.t.isFinal(this.pos);
  }

  canEnd(): boolean {
    return this.t.canEnd(this.pos);
  }

  forcedTokens(max: number): number[] {
    if (this.ended || max <= 0) return [];
    // The forced bytes first (bounded), then the longest tokens that lie wholly inside them.
    const forced: number[] = [];
    let p = this.pos;
    const limit = Math.max(64, max * 16);
    while (forced.length < limit) {
      const b = this.t.forcedByte(p);
      if (b < 0) break;
      forced.push(b);
      p = this.t.step(p, b);
    }
    const { byte, depth, skip, tokStart, tokIds } = this.t.trie;
    const out: number[] = [];
    let at = 0;
    while (at < forced.length && out.length < max) {
      // Descend the trie along forced[at…], remembering the deepest node that ends a token.
      let best = -1;
      let bestLen = 0;
      let i = 0;
      let d = 0;
      const n = byte.length;
      while (i < n && at + d < forced.length) {
        if (depth[i] !== d + 1) break;
        if (byte[i] === forced[at + d]) {
          d++;
          if (tokStart[i + 1]! > tokStart[i]!) {
            best = tokIds[tokStart[i]!]!;
            bestLen = d;
          }
          i++;
        } else i = skip[i]!;
      }
      if (best < 0) break;
      out.push(best);
      at += bestLen;
    }
    return out;
  }

  rollback(n: number): void {
    if (n <= 0) return;
    if (n >= this.hist.length)
      throw new RangeError(`cannot roll back ${n} of ${this.hist.length - 1} tokens`);
    if (this.ended) this.ended = false;
    this.hist.length -= n;
  }

  clone(): GrammarMatcher {
    return new Matcher(this.t, this.hist.slice(), this.ended);
  }
}
