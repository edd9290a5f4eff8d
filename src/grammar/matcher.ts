import type { Automaton } from "./automaton.js";
import { type CompiledGrammar, type GrammarMatcher, type GrammarVocab, maskWords } from "./constraint.js";
import { growInt32, IntStack, PairMap, SeqMap } from "./int-tables.js";
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
  private stState = new Int32Array(1024);
  private stParent = new Int32Array(1024);
  private stacks = 0;
  private readonly stMap = new PairMap();
  // positions: sorted stack ids whose top reads a byte, and whether the text may end here
  readonly posStacks: Int32Array[] = [];
  private endFlags = new Uint8Array(64);
  /** Positions of several stacks, by their sorted ids (then -1 when the text may end). */
  private readonly posMap = new SeqMap();
  /** Positions of at most one stack, by (stack id or -1, may-end). */
  private readonly posMap1 = new PairMap();
  /** Positions of one stack that reads a byte, neither ends nor calls: stack id → position + 1. */
  private single = new Int32Array(1024);
  /** next[p * 256 + b]: the position after byte b, -1 when b is not allowed, -2 not yet computed. */
  next = new Int32Array(256 * 64).fill(-2);
  // Scratch for `close` and `step`, reused: computing a position allocates only what it keeps.
  private readonly work = new IntStack();
  private readonly out = new IntStack();
  private seen = new Int32Array(1024);
  private stamp = 0;
  // The mask cache: a pool of mask buffers (kept, reused once the cache is full), `slotOf[p]` is
  // position p's slot + 1 (0: none).
  private readonly words: number;
  private readonly pool: Uint32Array[] = [];
  private slotOf = new Int32Array(64);
  private readonly slotPos: Int32Array;
  private slots = 0;
  private readonly at: Int32Array;
  /**
   * The bytes that leave position p where it is (8 words a position), for positions of one stack
   * (the bytes its DFA state loops on); starKnown[p]: 0 not computed, 1 none, 2 some.
   */
  private star = new Int32Array(64 * 8);
  private starKnown = new Uint8Array(64);
  readonly start: number;
  readonly trie: TokenTrie;

  constructor(
    readonly a: Automaton,
    readonly vocab: VocabIndex,
    readonly eog: Int32Array,
    private readonly maxMasks = 1024,
  ) {
    this.trie = vocab.all;
    this.words = maskWords(this.trie.vocabSize);
    this.slotPos = new Int32Array(maxMasks);
    this.at = new Int32Array(this.trie.maxDepth + 1);
    this.work.push(this.stack(a.ruleStart(0), -1));
    this.start = this.close();
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
    let id = this.stMap.get(state, parent);
    if (id < 0) {
      id = this.stacks++;
      if (id >= this.stState.length) {
        this.stState = growInt32(this.stState, id + 1, 0);
        this.stParent = growInt32(this.stParent, id + 1, 0);
        this.seen = growInt32(this.seen, id + 1, 0);
        this.single = growInt32(this.single, id + 1, 0);
      }
      this.stState[id] = state;
      this.stParent[id] = parent;
      this.stMap.set(state, parent, id);
    }
    return id;
  }

  /**
   * The position made of the stacks in `this.work` (consumed) after following calls and returns
   * that read no byte; -1 when nothing is left.
   */
  private close(): number {
    const a = this.a;
    const work = this.work;
    if (work.n === 1) {
      // The common case: one stack whose top reads a byte and neither ends nor calls.
      const id = this.single[work.buf[0]!]! - 1;
      if (id >= 0) {
        work.n = 0;
        return id;
      }
    }
    const stamp = ++this.stamp;
    const seen = this.seen;
    const out = this.out;
    out.n = 0;
    let end = 0;
    while (work.n > 0) {
      const st = work.pop();
      if (seen[st] === stamp) continue;
      seen[st] = stamp;
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
    if (out.n === 0 && !end) return -1;
    // One stack (the common case) is keyed by a pair of numbers, several by the sorted list.
    let id: number;
    if (out.n <= 1) id = this.posMap1.get(out.n === 0 ? -1 : out.buf[0]!, end);
    else {
      out.sort();
      if (end) out.push(-1);
      id = this.posMap.get(out.buf, out.n);
    }
    if (id < 0) {
      id = this.posStacks.length;
      if (out.n <= 1) {
        this.posStacks.push(out.buf.slice(0, out.n));
        this.posMap1.set(out.n === 0 ? -1 : out.buf[0]!, end, id);
      } else {
        const key = out.buf.slice(0, out.n);
        this.posStacks.push(end ? key.subarray(0, out.n - 1) : key);
        this.posMap.set(key, id);
      }
      if (id >= this.endFlags.length) {
        const f = new Uint8Array(this.endFlags.length * 2);
        f.set(this.endFlags);
        this.endFlags = f;
        this.next = growInt32(this.next, f.length * 256, -2);
        this.slotOf = growInt32(this.slotOf, f.length, 0);
        this.star = growInt32(this.star, f.length * 8, 0);
        const k = new Uint8Array(f.length);
        k.set(this.starKnown);
        this.starKnown = k;
      }
      this.endFlags[id] = end;
      if (out.n === 1 && !end) {
        const st = out.buf[0]!;
        const s = this.stState[st]!;
        if (!a.accepts(s) && a.calls(s) === undefined) this.single[st] = id + 1;
      }
    }
    return id;
  }

  /** The position after byte `b` from position `p` (-1: not allowed). */
  step(p: number, b: number): number {
    const v = this.next[p * 256 + b]!;
    if (v !== -2) return v;
    const work = this.work;
    work.n = 0;
    const stacks = this.posStacks[p]!;
    for (let i = 0; i < stacks.length; i++) {
      const st = stacks[i]!;
      const t = this.a.step(this.stState[st]!, b);
      if (t >= 0) work.push(this.stack(t, this.stParent[st]!));
    }
    const r = work.n === 0 ? -1 : this.close();
    this.next[p * 256 + b] = r;
    return r;
  }

  /** The position after these bytes, or -1. */
  walk(p: number, bytes: Uint8Array): number {
    for (let i = 0; i < bytes.length && p >= 0; i++) p = this.step(p, bytes[i]!);
    return p;
  }

  /** Writes the allowed-token mask at position `p` into `out`. */
  fillMask(p: number, out: Uint32Array): void {
    let slot = this.slotOf[p]! - 1;
    if (slot < 0) slot = this.computeMask(p);
    out.set(this.pool[slot]!);
  }

  /** Computes position `p`'s mask into a free slot of the cache; returns the slot. */
  private computeMask(p: number): number {
    const w = this.words;
    if (this.slots >= this.maxMasks) {
      // Full: forget every cached mask (generations revisit few positions; they come back).
      for (let i = 0; i < this.slots; i++) this.slotOf[this.slotPos[i]!] = 0;
      this.slots = 0;
    }
    const slot = this.slots++;
    if (slot === this.pool.length) this.pool.push(new Uint32Array(w));
    const m = this.pool[slot]!;
    let trie = this.vocab.all;
    const run = this.plainRun(p);
    if (run > 0) {
      m.set(this.vocab.plainUpTo(run));
      // Plain tokens longer than the run are in neither the mask nor the rest trie: walk them too
      // unless no plain byte may follow the run (the end of a length-bounded string).
      trie = run < this.runCap() && this.plainAfter(this.runEnd) ? this.vocab.all : this.vocab.rest;
    } else m.fill(0);
    const { byte, depth, skip, tokStart, tokIds, below } = trie;
    const n = byte.length;
    const at = this.at;
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
      let known = this.starKnown[q]!;
      if (known === 0) {
        known = this.starOf(q);
        next = this.next;
      }
      if (known === 2 && skip[i]! > i + 1) {
        // Every byte under this node leaves q unchanged: the whole subtree is allowed.
        const star = this.star;
        let all = true;
        for (let w = 0; w < 8 && all; w++) all = (below[i * 8 + w]! & ~star[q * 8 + w]!) === 0;
        if (all) {
          for (let k = tokStart[i]!, e = tokStart[skip[i]!]!; k < e; k++) {
            const t = tokIds[k]!;
            m[t >>> 5]! |= 1 << (t & 31);
          }
          i = skip[i]!;
          continue;
        }
      }
      at[d] = q;
      for (let k = tokStart[i]!, e = tokStart[i + 1]!; k < e; k++) {
        const t = tokIds[k]!;
        m[t >>> 5]! |= 1 << (t & 31);
      }
      i++;
    }
    if (this.canEnd(p))
      for (let k = 0; k < this.eog.length; k++) {
        const t = this.eog[k]!;
        m[t >>> 5]! |= 1 << (t & 31);
      }
    this.slotPos[slot] = p;
    this.slotOf[p] = slot + 1;
    return slot;
  }

  /** Computes the bytes that leave `p` unchanged (see `star`); returns starKnown[p]. */
  private starOf(p: number): number {
    let known = 1;
    const stacks = this.posStacks[p]!;
    if (stacks.length === 1) {
      // Bytes the top state loops on, where the position they lead to is p itself (the same stack
      // closes to the same position unless p's end flag came from elsewhere).
      const s = this.stState[stacks[0]!]!;
      for (let b = 0; b < 256; b++)
        if (this.a.step(s, b) === s && this.step(p, b) === p) {
          this.star[p * 8 + (b >>> 5)]! |= 1 << (b & 31);
          known = 2;
        }
    }
    this.starKnown[p] = known;
    return known;
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
    else this.t.fillMask(this.pos, mask);
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
