import { GrammarError } from "./constraint.js";
import { IntStack, SeqMap } from "./int-tables.js";
import type { Grammar, Node } from "./ir.js";

/**
 * IR → a pushdown automaton of byte-level DFAs: one DFA per rule that must stay a rule (the start
 * rule, recursive rules, and big rules used in several places); every other reference is inlined.
 * A DFA state has byte transitions and call edges (call rule r, then continue in state `ret`).
 * All rules' states share one numbering, so the matcher's tables are flat typed arrays.
 */

export interface CompileLimits {
  /** NFA states while building (default 400,000). */
  maxNfaStates?: number;
  /** Wall-clock budget for compiling, in ms (default 500). */
  timeoutMs?: number;
}

/**
 * The automaton the matcher walks. States are DFA states of one rule each, built lazily (a state's
 * transitions are computed the first time the matcher asks, then kept), so compiling costs only
 * the NFA, and a generation pays only for the states it visits.
 */
export interface Automaton {
  /** The state after byte `b`, or -1. */
  step(s: number, b: number): number;
  accepts(s: number): boolean;
  /** Whether any byte leads on from `s`. */
  hasBytes(s: number): boolean;
  /** Flat pairs [rule, ret, rule, ret, …]: call `rule`, then continue in `ret`. */
  calls(s: number): Int32Array | undefined;
  ruleStart(r: number): number;
  readonly ruleNames: readonly string[];
  /** DFA states built so far. */
  readonly states: number;
}

export class Deadline {
  private readonly end: number;
  private n = 0;
  constructor(
    readonly ms: number,
    private readonly field: string,
  ) {
    this.end = performance.now() + ms;
  }
  check(): void {
    if ((++this.n & 255) === 0 && performance.now() > this.end)
      throw new GrammarError(this.field, `compiling took longer than ${this.ms} ms (too complex)`);
  }
}

/** Rules that take part in a cycle of references. */
function recursiveRules(g: Grammar): Set<string> {
  const refs = new Map<string, Set<string>>();
  const collect = (n: Node, out: Set<string>) => {
    switch (n.k) {
      case "ref":
        out.add(n.name);
        break;
      case "seq":
      case "alt":
        for (const x of n.xs) collect(x, out);
        break;
      case "rep":
        collect(n.x, out);
        break;
      case "props":
        for (const it of n.items) collect(it.x, out);
        collect(n.sep, out);
        if (n.extra) collect(n.extra, out);
        break;
    }
  };
  for (const [name, node] of g.rules) {
    const s = new Set<string>();
    collect(node, s);
    refs.set(name, s);
  }
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const rec = new Set<string>();
  let counter = 0;
  const visit = (v: string) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of refs.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || refs.get(v)!.has(v)) for (const x of comp) rec.add(x);
    }
  };
  for (const name of g.rules.keys()) if (!index.has(name)) visit(name);
  return rec;
}

/** Thompson NFA with byte-range edges, epsilon edges and call edges. */
class NFA {
  eps: number[][] = [];
  bytes: Array<Array<[number, number, number]>> = []; // [lo, hi, to]
  calls: Array<Array<[number, number]>> = []; // [rule, to]
  constructor(
    private readonly limit: number,
    private readonly field: string,
  ) {}
  add(): number {
    if (this.eps.length >= this.limit)
      throw new GrammarError(this.field, `grammar too large (over ${this.limit} automaton states)`);
    this.eps.push([]);
    this.bytes.push([]);
    this.calls.push([]);
    return this.eps.length - 1;
  }
}

export function buildAutomaton(g: Grammar, field: string, limits: CompileLimits = {}): Automaton {
  const deadline = new Deadline(limits.timeoutMs ?? 500, field);
  const maxNfa = limits.maxNfaStates ?? 400_000;
  if (!g.rules.has(g.start)) throw new GrammarError(field, `no start rule "${g.start}"`);
  const recursive = recursiveRules(g);
  const ruleIndex = new Map<string, number>();
  const ruleNames: string[] = [];
  const called = (name: string): number => {
    let i = ruleIndex.get(name);
    if (i === undefined) {
      i = ruleNames.length;
      ruleIndex.set(name, i);
      ruleNames.push(name);
    }
    return i;
  };
  called(g.start);
  const nfa = new NFA(maxNfa, field);

  // Rules used in several places and large stay rules (called), to keep the automaton small.
  const useCount = new Map<string, number>();
  const countUses = (n: Node, seen: Set<Node>) => {
    if (seen.has(n)) return;
    seen.add(n);
    switch (n.k) {
      case "ref":
        useCount.set(n.name, (useCount.get(n.name) ?? 0) + 1);
        break;
      case "seq":
      case "alt":
        for (const x of n.xs) countUses(x, seen);
        break;
      case "rep":
        countUses(n.x, seen);
        break;
      case "props":
        for (const it of n.items) countUses(it.x, seen);
        countUses(n.sep, seen);
        if (n.extra) countUses(n.extra, seen);
        break;
    }
  };
  for (const node of g.rules.values()) countUses(node, new Set());
  const sizeMemo = new Map<string, number>();
  const size = (n: Node, depth: number): number => {
    if (depth > 200) return Number.POSITIVE_INFINITY;
    switch (n.k) {
      case "bytes":
        return 1;
      case "utf8":
        return n.seqs.length * 2;
      case "ref": {
        if (recursive.has(n.name)) return 1;
        let s = sizeMemo.get(n.name);
        if (s === undefined) {
          const body = g.rules.get(n.name);
          if (!body) throw new GrammarError(field, `undefined rule "${n.name}"`);
          s = size(body, depth + 1);
          sizeMemo.set(n.name, s);
        }
        return s > 400 && (useCount.get(n.name) ?? 0) > 1 ? 1 : s;
      }
      case "seq":
      case "alt":
        return n.xs.reduce((a, x) => a + size(x, depth + 1), 1);
      case "rep": {
        const copies = n.max === Number.POSITIVE_INFINITY ? Math.max(n.min, 1) : n.max;
        return 2 + copies * size(n.x, depth + 1);
      }
      case "props":
        return (
          n.items.reduce((a, it) => a + 4 + size(it.x, depth + 1) + size(n.sep, depth + 1), 1) +
          (n.extra ? size(n.extra, depth + 1) + size(n.sep, depth + 1) : 0)
        );
      case "avoid":
        return n.text.length + 2;
    }
  };
  const isCall = (name: string) => {
    if (recursive.has(name)) return true;
    size({ k: "ref", name }, 0);
    return (sizeMemo.get(name) ?? 0) > 400 && (useCount.get(name) ?? 0) > 1;
  };

  // Refuse what would be too large before building it (nested counted repetitions multiply).
  for (const name of [g.start, ...recursive])
    if (g.rules.has(name) && size(g.rules.get(name)!, 0) > maxNfa)
      throw new GrammarError(field, `grammar too large (over ${maxNfa} automaton states)`);
  const inlining = new Set<string>();
  /** Builds `n` from state `from`; returns its exit state. */
  const build = (n: Node, from: number): number => {
    deadline.check();
    switch (n.k) {
      case "bytes": {
        const to = nfa.add();
        for (const [lo, hi] of n.ranges) nfa.bytes[from]!.push([lo, hi, to]);
        return to;
      }
      case "utf8": {
        // Sequences sharing a suffix share its states (UTF-8 continuation bytes), so that the
        // determinized automaton has a handful of states per character, not one per sequence.
        const end = nfa.add();
        const bySuffix = new Map<string, number>();
        const suffixState = (sq: ReadonlyArray<readonly [number, number]>, i: number): number => {
          if (i === sq.length) return end;
          const key = sq
            .slice(i)
            .map((r) => `${r[0]}-${r[1]}`)
            .join(" ");
          let st = bySuffix.get(key);
          if (st === undefined) {
            st = nfa.add();
            bySuffix.set(key, st);
            nfa.bytes[st]!.push([sq[i]![0], sq[i]![1], suffixState(sq, i + 1)]);
          }
          return st;
        };
        for (const sq of n.seqs) nfa.bytes[from]!.push([sq[0]![0], sq[0]![1], suffixState(sq, 1)]);
        return end;
      }
      case "seq": {
        let cur = from;
        for (const x of n.xs) cur = build(x, cur);
        return cur;
      }
      case "alt": {
        const end = nfa.add();
        for (const x of n.xs) {
          const s = nfa.add();
          nfa.eps[from]!.push(s);
          nfa.eps[build(x, s)]!.push(end);
        }
        return end;
      }
      case "rep": {
        let cur = from;
        for (let i = 0; i < n.min; i++) cur = build(n.x, cur);
        if (n.max === Number.POSITIVE_INFINITY) {
          const loop = nfa.add();
          nfa.eps[cur]!.push(loop);
          const body = nfa.add();
          nfa.eps[loop]!.push(body);
          nfa.eps[build(n.x, body)]!.push(loop);
          return loop;
        }
        const end = nfa.add();
        for (let i = n.min; i < n.max; i++) {
          nfa.eps[cur]!.push(end);
          cur = build(n.x, cur);
        }
        nfa.eps[cur]!.push(end);
        return end;
      }
      case "ref": {
        const body = g.rules.get(n.name);
        if (!body) throw new GrammarError(field, `undefined rule "${n.name}"`);
        if (isCall(n.name)) {
          const to = nfa.add();
          nfa.calls[from]!.push([called(n.name), to]);
          return to;
        }
        if (inlining.has(n.name)) throw new GrammarError(field, `rule "${n.name}" refers to itself`);
        inlining.add(n.name);
        const end = build(body, from);
        inlining.delete(n.name);
        return end;
      }
      case "props": {
        let lane0 = from; // nothing written yet
        let lane1 = nfa.add(); // something written: the next item needs a separator
        const item = (x: Node) => {
          const x0 = nfa.add();
          nfa.eps[lane0]!.push(x0);
          nfa.eps[build(n.sep, lane1)]!.push(x0);
          return build(x, x0);
        };
        for (const it of n.items) {
          const exit = item(it.x);
          const n0 = nfa.add();
          const n1 = nfa.add();
          nfa.eps[exit]!.push(n1);
          if (it.opt) {
            nfa.eps[lane0]!.push(n0);
            nfa.eps[lane1]!.push(n1);
          }
          lane0 = n0;
          lane1 = n1;
        }
        if (n.extra) nfa.eps[item(n.extra)]!.push(lane1);
        const end = nfa.add();
        nfa.eps[lane0]!.push(end);
        nfa.eps[lane1]!.push(end);
        return end;
      }
      case "avoid":
        return buildAvoid(nfa, n.text, from);
    }
  };

  // Build each called rule's NFA (the list grows as rules are found to be called).
  const nfaStart: number[] = [];
  const isEnd: number[] = [];
  for (let r = 0; r < ruleNames.length; r++) {
    const s = nfa.add();
    nfaStart.push(s);
    isEnd.push(build(g.rules.get(ruleNames[r]!)!, s));
  }
  const a = new LazyDfa(nfa, nfaStart, isEnd, ruleNames);
  checkLeftRecursion(a, field);
  return a;
}

/**
 * Any bytes that do not hold `text`: the string-matching automaton of `text` (state i: the last i
 * bytes read are its first i), every state accepting, without the edges that would complete it.
 */
function buildAvoid(nfa: NFA, text: Uint8Array, from: number): number {
  const n = text.length;
  const end = nfa.add();
  if (n === 0) return end; // everything holds the empty string: nothing may be written
  const st: number[] = [];
  for (let i = 0; i < n; i++) st.push(nfa.add());
  nfa.eps[from]!.push(st[0]!);
  // fail[i]: the longest proper border of text[0..i)
  const fail = new Int32Array(n + 1);
  for (let i = 2, k = 0; i <= n; i++) {
    while (k > 0 && text[k] !== text[i - 1]) k = fail[k]!;
    if (text[k] === text[i - 1]) k++;
    fail[i] = k;
  }
  const target = (i: number, b: number): number => {
    let k = i;
    while (k > 0 && text[k] !== b) k = fail[k]!;
    return text[k] === b ? k + 1 : 0;
  };
  for (let i = 0; i < n; i++) {
    let lo = 0;
    let t = target(i, 0);
    for (let b = 1; b <= 256; b++) {
      const u = b < 256 ? target(i, b) : -1;
      if (u !== t) {
        if (t < n) nfa.bytes[st[i]!]!.push([lo, b - 1, st[t]!]);
        lo = b;
        t = u;
      }
    }
    nfa.eps[st[i]!]!.push(end);
  }
  return end;
}

/** Subset construction on demand. */
class LazyDfa implements Automaton {
  private readonly sets: Int32Array[] = [];
  private readonly ids = new SeqMap();
  private trans = new Int32Array(256 * 256);
  private flags = new Uint8Array(256); // 1 expanded, 2 accepts, 4 has bytes
  private readonly callList: (Int32Array | undefined)[] = [];
  private readonly starts: Int32Array;
  private readonly endOf: Uint8Array;
  private readonly mark: Int32Array;
  private stamp = 0;
  // Scratch reused by every expansion: the closure being built, the edges out of a set (lo, hi,
  // to), the targets of one byte range and of the range before it, and the range bounds.
  private readonly cl = new IntStack();
  private readonly work = new IntStack();
  private readonly edges = new IntStack();
  private readonly targets = new IntStack();
  private readonly prevTargets = new IntStack();
  private readonly bound = new Uint8Array(257);

  constructor(
    private readonly nfa: NFA,
    nfaStart: number[],
    ends: number[],
    readonly ruleNames: readonly string[],
  ) {
    this.endOf = new Uint8Array(nfa.eps.length);
    for (const e of ends) this.endOf[e] = 1;
    this.mark = new Int32Array(nfa.eps.length);
    this.starts = Int32Array.from(nfaStart, (s) => {
      this.targets.n = 0;
      this.targets.push(s);
      return this.intern(this.targets);
    });
  }

  get states(): number {
    return this.sets.length;
  }

  /** The DFA state of the epsilon closure of `seeds` (read, not changed). */
  private intern(seeds: IntStack): number {
    const stamp = ++this.stamp;
    const out = this.cl;
    const work = this.work;
    out.n = 0;
    work.n = 0;
    for (let i = 0; i < seeds.n; i++) {
      const s = seeds.buf[i]!;
      if (this.mark[s] !== stamp) {
        this.mark[s] = stamp;
        work.push(s);
      }
    }
    while (work.n > 0) {
      const s = work.pop();
      out.push(s);
      const eps = this.nfa.eps[s]!;
      for (let i = 0; i < eps.length; i++) {
        const t = eps[i]!;
        if (this.mark[t] !== stamp) {
          this.mark[t] = stamp;
          work.push(t);
        }
      }
    }
    out.sort();
    let id = this.ids.get(out.buf, out.n);
    if (id < 0) {
      id = this.sets.length;
      const set = out.buf.slice(0, out.n);
      this.sets.push(set);
      this.ids.set(set, id);
      if (id >= this.flags.length) {
        const f = new Uint8Array(this.flags.length * 2);
        f.set(this.flags);
        this.flags = f;
        const t = new Int32Array(this.trans.length * 2);
        t.set(this.trans);
        this.trans = t;
      }
    }
    return id;
  }

  private expand(d: number): void {
    const set = this.sets[d]!;
    const edges = this.edges;
    const bound = this.bound;
    edges.n = 0;
    let callMap: Map<number, number[]> | undefined;
    let f = 1;
    for (let i = 0; i < set.length; i++) {
      const s = set[i]!;
      if (this.endOf[s]) f |= 2;
      for (const [lo, hi, to] of this.nfa.bytes[s]!) {
        edges.push(lo);
        edges.push(hi);
        edges.push(to);
        bound[lo] = 1;
        bound[hi + 1] = 1;
      }
      for (const [rule, to] of this.nfa.calls[s]!) {
        callMap ??= new Map();
        const l = callMap.get(rule);
        if (l) l.push(to);
        else callMap.set(rule, [to]);
      }
    }
    const row = d * 256;
    this.trans.fill(-1, row, row + 256);
    if (edges.n > 0) {
      f |= 4;
      bound[0] = 1;
      const e = edges.buf;
      const targets = this.targets;
      const prev = this.prevTargets;
      prev.n = -1;
      let prevId = -1;
      for (let lo = 0; lo < 256; ) {
        let hi = lo + 1;
        while (hi < 256 && !bound[hi]) hi++;
        targets.n = 0;
        for (let k = 0; k < edges.n; k += 3) if (e[k]! <= lo && lo <= e[k + 1]!) targets.push(e[k + 2]!);
        if (targets.n > 0) {
          // Neighbouring ranges often lead to the same NFA states: one closure for them.
          let same = targets.n === prev.n;
          for (let k = 0; same && k < targets.n; k++) same = targets.buf[k] === prev.buf[k];
          if (!same) {
            prevId = this.intern(targets);
            prev.n = 0;
            for (let k = 0; k < targets.n; k++) prev.push(targets.buf[k]!);
          }
          this.trans.fill(prevId, row + lo, row + hi);
        }
        lo = hi;
      }
      bound.fill(0);
    }
    let calls: Int32Array | undefined;
    if (callMap) {
      const flat: number[] = [];
      for (const [rule, tos] of callMap) {
        this.targets.n = 0;
        for (const t of tos) this.targets.push(t);
        flat.push(rule, this.intern(this.targets));
      }
      calls = Int32Array.from(flat);
    }
    this.callList[d] = calls;
    this.flags[d] = f;
  }

  step(s: number, b: number): number {
    if (!(this.flags[s]! & 1)) this.expand(s);
    return this.trans[s * 256 + b]!;
  }
  accepts(s: number): boolean {
    if (!(this.flags[s]! & 1)) this.expand(s);
    return (this.flags[s]! & 2) !== 0;
  }
  hasBytes(s: number): boolean {
    if (!(this.flags[s]! & 1)) this.expand(s);
    return (this.flags[s]! & 4) !== 0;
  }
  calls(s: number): Int32Array | undefined {
    if (!(this.flags[s]! & 1)) this.expand(s);
    return this.callList[s];
  }
  ruleStart(r: number): number {
    return this.starts[r]!;
  }
}

/** Refuses rules that can call themselves before reading a byte (the matcher would loop). */
function checkLeftRecursion(a: Automaton, field: string): void {
  const R = a.ruleNames.length;
  const nullable = new Uint8Array(R);
  // states reachable from a rule's start without reading a byte, through nullable calls
  const reach = (r: number, visitCall: (rule: number) => void): boolean => {
    const seen = new Set<number>([a.ruleStart(r)]);
    const work = [a.ruleStart(r)];
    let acc = false;
    while (work.length > 0) {
      const s = work.pop()!;
      if (a.accepts(s)) acc = true;
      const c = a.calls(s);
      if (!c) continue;
      for (let i = 0; i < c.length; i += 2) {
        visitCall(c[i]!);
        if (nullable[c[i]!] && !seen.has(c[i + 1]!)) {
          seen.add(c[i + 1]!);
          work.push(c[i + 1]!);
        }
      }
    }
    return acc;
  };
  for (let changed = true; changed; ) {
    changed = false;
    for (let r = 0; r < R; r++)
      if (!nullable[r] && reach(r, () => {})) {
        nullable[r] = 1;
        changed = true;
      }
  }
  const left: number[][] = [];
  for (let r = 0; r < R; r++) {
    const l: number[] = [];
    reach(r, (x) => l.push(x));
    left.push(l);
  }
  const state = new Uint8Array(R); // 0 new, 1 on path, 2 done
  const dfs = (r: number) => {
    state[r] = 1;
    for (const x of left[r]!) {
      if (state[x] === 1) throw new GrammarError(field, `rule "${a.ruleNames[x]}" is left-recursive`);
      if (state[x] === 0) dfs(x);
    }
    state[r] = 2;
  };
  for (let r = 0; r < R; r++) if (state[r] === 0) dfs(r);
}
