import { GrammarError } from "./constraint.js";
import { alt, EMPTY, type Grammar, lit, type Node, opt, ref, rep, seq, star } from "./ir.js";
import {
  ANY_STRING,
  type Bound,
  formatString,
  INTEGER,
  integerRange,
  jsonChars,
  NUMBER,
  numberRange,
  STRING_UNIT,
  stringExcluding,
} from "./json-lexical.js";
import { searchRegexToNode } from "./regex.js";

/**
 * JSON Schema → grammar IR, for compact JSON (no whitespace anywhere: `{"a":1,"b":[2,3]}`, as
 * JSON.stringify writes it), properties in definition order. Every keyword is either honoured or
 * refused with a GrammarError naming it; annotations (title, description, default, …) are ignored.
 * Where an exact grammar would be impractical the grammar is a subset of the schema's language
 * (formats, non-integer numeric bounds), never a superset: what it admits always validates.
 */

const ANNOTATIONS = new Set([
  "title",
  "description",
  "$schema",
  "$id",
  "$comment",
  "$anchor",
  "default",
  "examples",
  "example",
  "deprecated",
  "readOnly",
  "writeOnly",
  "$defs",
  "definitions",
  "contentEncoding",
  "contentMediaType",
  "discriminator",
  "strict",
]);
const SUPPORTED = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "prefixItems",
  "additionalItems",
  "minItems",
  "maxItems",
  "enum",
  "const",
  "anyOf",
  "oneOf",
  "allOf",
  "$ref",
  "minLength",
  "maxLength",
  "pattern",
  "format",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
  "nullable",
  "uniqueItems",
]);
const OBJECT_KW = ["properties", "required", "additionalProperties"];
const ARRAY_KW = ["items", "prefixItems", "minItems", "maxItems", "additionalItems"];
const STRING_KW = ["minLength", "maxLength", "pattern", "format"];
const NUMBER_KW = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
const TYPES = ["null", "boolean", "object", "array", "number", "integer", "string"];

type Schema = Record<string, unknown>;

const isObj = (x: unknown): x is Schema => typeof x === "object" && x !== null && !Array.isArray(x);

const VALUE = "json:value";

/** The grammar of any JSON value (compact); `start` is the rule to begin with. */
export function anyJsonRules(rules: Map<string, Node>): void {
  if (rules.has(VALUE)) return;
  const v = ref(VALUE);
  const member = seq(ANY_STRING, lit(":"), v);
  const object = seq(lit("{"), opt(seq(member, star(seq(lit(","), member)))), lit("}"));
  const array = seq(lit("["), opt(seq(v, star(seq(lit(","), v)))), lit("]"));
  rules.set("json:object", object);
  rules.set(
    VALUE,
    alt(ref("json:object"), array, ANY_STRING, NUMBER, lit("true"), lit("false"), lit("null")),
  );
}

export function jsonObjectGrammar(): Grammar {
  const rules = new Map<string, Node>();
  anyJsonRules(rules);
  return { rules, start: "json:object" };
}

export function jsonSchemaGrammar(schema: unknown, field = "schema"): Grammar {
  const c = new SchemaCompiler(schema);
  const root = c.compile(schema, field);
  c.rules.set("root", root);
  return { rules: c.rules, start: "root" };
}

class SchemaCompiler {
  readonly rules = new Map<string, Node>();
  private readonly refNames = new Map<string, string>();
  constructor(private readonly root: unknown) {}

  private any(): Node {
    anyJsonRules(this.rules);
    return ref(VALUE);
  }

  private resolve(pointer: string, field: string): unknown {
    if (!pointer.startsWith("#"))
      throw new GrammarError(field, `only local references ("#/...") are supported, not "${pointer}"`);
    let cur: unknown = this.root;
    if (pointer === "#" || pointer === "#/") return cur;
    if (!pointer.startsWith("#/")) throw new GrammarError(field, `unsupported reference "${pointer}"`);
    for (const raw of pointer.slice(2).split("/")) {
      const key = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
      if (Array.isArray(cur)) cur = cur[Number(key)];
      else if (isObj(cur)) cur = cur[key];
      else cur = undefined;
      if (cur === undefined) throw new GrammarError(field, `reference "${pointer}" points at nothing`);
    }
    return cur;
  }

  /** A reference becomes a rule of its own (so recursion works); the automaton inlines it when it can. */
  private refNode(pointer: string, field: string): Node {
    let name = this.refNames.get(pointer);
    if (name === undefined) {
      name = `ref:${pointer}`;
      this.refNames.set(pointer, name);
      const target = this.resolve(pointer, field);
      this.rules.set(name, EMPTY); // placeholder while compiling (recursion)
      this.rules.set(name, this.compile(target, `${field}(${pointer})`));
    }
    return ref(name);
  }

  compile(s: unknown, field: string): Node {
    if (s === true) return this.any();
    if (s === false) throw new GrammarError(field, "the schema false admits no value");
    if (!isObj(s)) throw new GrammarError(field, "a schema must be an object or a boolean");
    for (const k of Object.keys(s))
      if (!SUPPORTED.has(k) && !ANNOTATIONS.has(k))
        throw new GrammarError(`${field}.${k}`, "unsupported keyword");
    if (s.uniqueItems === true)
      throw new GrammarError(`${field}.uniqueItems`, "uniqueItems: true is not supported");
    if (typeof s.$ref === "string") {
      const rest = this.withoutAnnotations(s, ["$ref"]);
      if (Object.keys(rest).length === 0) return this.refNode(s.$ref, `${field}.$ref`);
      return this.compile(this.merge(this.resolveRefs(s, field), {}, field), field);
    }
    if (s.$ref !== undefined) throw new GrammarError(`${field}.$ref`, "must be a string");
    if (s.allOf !== undefined) {
      if (!Array.isArray(s.allOf) || s.allOf.length === 0)
        throw new GrammarError(`${field}.allOf`, "must be a non-empty array");
      let merged: Schema = { ...s };
      delete merged.allOf;
      s.allOf.forEach((sub, i) => {
        merged = this.merge(merged, this.resolveRefs(sub, `${field}.allOf[${i}]`), `${field}.allOf[${i}]`);
      });
      return this.compile(merged, field);
    }
    for (const kw of ["anyOf", "oneOf"] as const) {
      if (s[kw] === undefined) continue;
      const list = s[kw];
      if (!Array.isArray(list) || list.length === 0)
        throw new GrammarError(`${field}.${kw}`, "must be a non-empty array");
      if (kw === "anyOf" && s.oneOf !== undefined)
        throw new GrammarError(`${field}.oneOf`, "anyOf together with oneOf is not supported");
      const rest = { ...s };
      delete rest[kw];
      const siblings = Object.keys(this.withoutAnnotations(rest, [])).length > 0;
      return alt(
        ...list.map((b, i) =>
          siblings
            ? this.compile(
                this.merge(rest, this.resolveRefs(b, `${field}.${kw}[${i}]`), `${field}.${kw}[${i}]`),
                `${field}.${kw}[${i}]`,
              )
            : this.compile(b, `${field}.${kw}[${i}]`),
        ),
      );
    }
    let types = this.types(s, field);
    if (s.const !== undefined || s.enum !== undefined) {
      let values: unknown[];
      if (s.const !== undefined) values = [s.const];
      else if (Array.isArray(s.enum) && s.enum.length > 0) values = s.enum;
      else throw new GrammarError(`${field}.enum`, "must be a non-empty array");
      if (types)
        values = values.filter(
          (v) => types!.includes(jsonType(v)) || (types!.includes("number") && jsonType(v) === "integer"),
        );
      if (values.length === 0) throw new GrammarError(`${field}.enum`, "no value of the allowed types");
      return alt(...values.map((v) => lit(JSON.stringify(v))));
    }
    if (!types) types = inferTypes(s);
    if (!types) return this.any();
    return alt(...types.map((t) => this.typed(s, t, field)));
  }

  private types(s: Schema, field: string): string[] | undefined {
    if (s.type === undefined) return s.nullable === true ? undefined : undefined;
    const list = Array.isArray(s.type) ? s.type : [s.type];
    for (const t of list)
      if (typeof t !== "string" || !TYPES.includes(t))
        throw new GrammarError(`${field}.type`, `unknown type ${JSON.stringify(t)}`);
    const out = [...new Set(list as string[])];
    if (out.includes("number")) {
      const i = out.indexOf("integer");
      if (i >= 0) out.splice(i, 1);
    }
    if (s.nullable === true && !out.includes("null")) out.push("null");
    return out;
  }

  private withoutAnnotations(s: Schema, drop: string[]): Schema {
    const out: Schema = {};
    for (const [k, v] of Object.entries(s)) if (!ANNOTATIONS.has(k) && !drop.includes(k)) out[k] = v;
    return out;
  }

  /** A schema with its top-level $ref replaced by the target (merged with the siblings). */
  private resolveRefs(s: unknown, field: string, depth = 0): Schema {
    if (s === true) return {};
    if (!isObj(s)) throw new GrammarError(field, "a schema must be an object (false is not supported here)");
    if (typeof s.$ref !== "string") return s;
    if (depth > 32) throw new GrammarError(`${field}.$ref`, "references nest too deep");
    const target = this.resolveRefs(this.resolve(s.$ref, `${field}.$ref`), `${field}.$ref`, depth + 1);
    const rest = { ...s };
    delete rest.$ref;
    return this.merge(target, rest, field);
  }

  /** allOf: the two schemas as one, where they can be merged; refuses what cannot. */
  private merge(a: Schema, b: Schema, field: string): Schema {
    const out: Schema = { ...a };
    if (typeof out.$ref === "string") return this.merge(this.resolveRefs(out, field), b, field);
    b = this.resolveRefs(b, field);
    const objectKw = (s: Schema) => s.properties !== undefined || s.additionalProperties !== undefined;
    if (objectKw(a) && objectKw(b)) {
      // Each side's additionalProperties applies to the other side's properties.
      const pa = (a.properties ?? {}) as Schema;
      const pb = (b.properties ?? {}) as Schema;
      const apa = a.additionalProperties ?? true;
      const apb = b.additionalProperties ?? true;
      const both = (x: unknown, y: unknown): unknown =>
        x === false || y === false ? false : x === true ? y : y === true ? x : { allOf: [x, y] };
      const props: Schema = {};
      for (const name of new Set([...Object.keys(pa), ...Object.keys(pb)])) {
        const m = both(name in pa ? pa[name] : apa, name in pb ? pb[name] : apb);
        if (m !== false) props[name] = m;
        else if (
          ((a.required ?? []) as string[]).includes(name) ||
          ((b.required ?? []) as string[]).includes(name)
        )
          throw new GrammarError(
            `${field}.properties.${name}`,
            "required, but allOf forbids it (additionalProperties)",
          );
        else if (apa !== false && apb !== false)
          throw new GrammarError(
            `${field}.properties.${name}`,
            "a property schema of false is not supported",
          );
      }
      out.properties = props;
      out.additionalProperties = both(apa, apb);
      b = { ...b };
      delete b.properties;
      delete b.additionalProperties;
    }
    for (const [k, v] of Object.entries(b)) {
      if (ANNOTATIONS.has(k) && k !== "$defs" && k !== "definitions") {
        if (!(k in out)) out[k] = v;
        continue;
      }
      if (!(k in out)) {
        out[k] = v;
        continue;
      }
      const u = out[k];
      switch (k) {
        case "properties": {
          const p: Schema = { ...(u as Schema) };
          for (const [name, sub] of Object.entries(v as Schema))
            p[name] = name in p ? { allOf: [p[name], sub] } : sub;
          out[k] = p;
          break;
        }
        case "required":
          out[k] = [...new Set([...(u as string[]), ...(v as string[])])];
          break;
        case "type": {
          const ta = Array.isArray(u) ? u : [u];
          const tb = Array.isArray(v) ? v : [v];
          const both = ta.filter((t) => tb.includes(t) || (t === "integer" && tb.includes("number")));
          for (const t of tb) if (t === "integer" && ta.includes("number") && !both.includes(t)) both.push(t);
          if (both.length === 0)
            throw new GrammarError(`${field}.type`, "allOf types have nothing in common");
          out[k] = both;
          break;
        }
        case "minimum":
        case "minLength":
        case "minItems":
        case "exclusiveMinimum":
          out[k] = Math.max(u as number, v as number);
          break;
        case "maximum":
        case "maxLength":
        case "maxItems":
        case "exclusiveMaximum":
          out[k] = Math.min(u as number, v as number);
          break;
        case "enum": {
          const sb = new Set((v as unknown[]).map((x) => JSON.stringify(x)));
          out[k] = (u as unknown[]).filter((x) => sb.has(JSON.stringify(x)));
          break;
        }
        case "items":
          if (u === false || v === false) out[k] = false;
          else out[k] = { allOf: [u, v] };
          break;
        case "$defs":
        case "definitions":
          break;
        default:
          if (JSON.stringify(u) !== JSON.stringify(v))
            throw new GrammarError(
              `${field}.${k}`,
              "allOf with two different values of this keyword cannot be merged",
            );
      }
    }
    return out;
  }

  private typed(s: Schema, t: string, field: string): Node {
    switch (t) {
      case "null":
        return lit("null");
      case "boolean":
        return alt(lit("true"), lit("false"));
      case "string":
        return this.string(s, field);
      case "integer":
      case "number":
        return this.number(s, t, field);
      case "object":
        return this.object(s, field);
      case "array":
        return this.array(s, field);
    }
    throw new GrammarError(`${field}.type`, `unknown type "${t}"`);
  }

  private string(s: Schema, field: string): Node {
    const min = count(s.minLength, `${field}.minLength`) ?? 0;
    const max = count(s.maxLength, `${field}.maxLength`) ?? Number.POSITIVE_INFINITY;
    if (min > max) throw new GrammarError(`${field}.minLength`, "greater than maxLength");
    const bounded = s.minLength !== undefined || s.maxLength !== undefined;
    if (s.format !== undefined) {
      if (typeof s.format !== "string") throw new GrammarError(`${field}.format`, "must be a string");
      if (s.pattern !== undefined)
        throw new GrammarError(`${field}.pattern`, "pattern together with format is not supported");
      if (bounded)
        throw new GrammarError(
          `${field}.format`,
          "format together with minLength/maxLength is not supported",
        );
      return formatString(s.format, `${field}.format`);
    }
    if (s.pattern !== undefined) {
      if (typeof s.pattern !== "string") throw new GrammarError(`${field}.pattern`, "must be a string");
      if (bounded)
        throw new GrammarError(
          `${field}.pattern`,
          "pattern together with minLength/maxLength is not supported",
        );
      return seq(lit('"'), searchRegexToNode(s.pattern, `${field}.pattern`, jsonChars), lit('"'));
    }
    if (!bounded) return ANY_STRING;
    return seq(lit('"'), rep(STRING_UNIT, min, max), lit('"'));
  }

  private number(s: Schema, t: string, field: string): Node {
    for (const k of NUMBER_KW)
      if (s[k] !== undefined && (typeof s[k] !== "number" || !Number.isFinite(s[k])))
        throw new GrammarError(
          `${field}.${k}`,
          k.startsWith("exclusive") && typeof s[k] === "boolean"
            ? "the boolean form (draft 4) is not supported"
            : "must be a finite number",
        );
    const lower: Bound[] = [];
    const upper: Bound[] = [];
    // Non-integer bounds round inward (a subset: every number admitted satisfies the bound).
    const lo = (x: number, excl: boolean): Bound =>
      Number.isInteger(x) ? { v: BigInt(x), excl } : { v: BigInt(Math.ceil(x)), excl: false };
    const hi = (x: number, excl: boolean): Bound =>
      Number.isInteger(x) ? { v: BigInt(x), excl } : { v: BigInt(Math.floor(x)), excl: false };
    if (s.minimum !== undefined) lower.push(lo(s.minimum as number, false));
    if (s.exclusiveMinimum !== undefined) lower.push(lo(s.exclusiveMinimum as number, true));
    if (s.maximum !== undefined) upper.push(hi(s.maximum as number, false));
    if (s.exclusiveMaximum !== undefined) upper.push(hi(s.exclusiveMaximum as number, true));
    const tighterLo = (a: Bound, b: Bound) => (a.v > b.v || (a.v === b.v && a.excl) ? a : b);
    const tighterHi = (a: Bound, b: Bound) => (a.v < b.v || (a.v === b.v && a.excl) ? a : b);
    const L = lower.length > 0 ? lower.reduce(tighterLo) : null;
    const H = upper.length > 0 ? upper.reduce(tighterHi) : null;
    if (t === "integer") {
      if (!L && !H) return INTEGER;
      const node = integerRange(L ? (L.excl ? L.v + 1n : L.v) : null, H ? (H.excl ? H.v - 1n : H.v) : null);
      if (node.k === "alt" && node.xs.length === 0)
        throw new GrammarError(field, "no integer within the bounds");
      return node;
    }
    if (!L && !H) return NUMBER;
    return numberRange(L, H);
  }

  private object(s: Schema, field: string): Node {
    const props = s.properties ?? {};
    if (!isObj(props)) throw new GrammarError(`${field}.properties`, "must be an object");
    const required = s.required ?? [];
    if (!Array.isArray(required) || required.some((r) => typeof r !== "string"))
      throw new GrammarError(`${field}.required`, "must be an array of strings");
    const req = new Set(required as string[]);
    const ap = s.additionalProperties;
    if (ap !== undefined && typeof ap !== "boolean" && !isObj(ap))
      throw new GrammarError(`${field}.additionalProperties`, "must be a boolean or a schema");
    const apNode = (f: string) => (ap === undefined || ap === true ? this.any() : this.compile(ap, f));
    const items: { x: Node; opt: boolean }[] = [];
    const names = Object.keys(props);
    for (const name of names)
      items.push({
        x: seq(lit(`${JSON.stringify(name)}:`), this.compile(props[name], `${field}.properties.${name}`)),
        opt: !req.has(name),
      });
    for (const name of req) {
      if (name in props) continue;
      if (ap === false)
        throw new GrammarError(
          `${field}.required`,
          `"${name}" is required but additionalProperties is false`,
        );
      items.push({
        x: seq(lit(`${JSON.stringify(name)}:`), apNode(`${field}.additionalProperties`)),
        opt: false,
      });
      names.push(name);
    }
    const extra =
      ap === false
        ? undefined
        : seq(stringExcluding(names), lit(":"), apNode(`${field}.additionalProperties`));
    return seq(lit("{"), { k: "props", items, sep: lit(","), extra }, lit("}"));
  }

  private array(s: Schema, field: string): Node {
    let prefix: unknown[] = [];
    let items: unknown = s.items;
    if (Array.isArray(s.items)) {
      // draft 4-7 tuple form
      if (s.prefixItems !== undefined)
        throw new GrammarError(`${field}.items`, "an array of items together with prefixItems");
      prefix = s.items;
      items = s.additionalItems;
    } else if (s.additionalItems !== undefined)
      throw new GrammarError(`${field}.additionalItems`, "only with an array of items");
    if (s.prefixItems !== undefined) {
      if (!Array.isArray(s.prefixItems)) throw new GrammarError(`${field}.prefixItems`, "must be an array");
      prefix = s.prefixItems;
    }
    const k = prefix.length;
    const min = count(s.minItems, `${field}.minItems`) ?? 0;
    let max = count(s.maxItems, `${field}.maxItems`) ?? Number.POSITIVE_INFINITY;
    if (items === false) max = Math.min(max, k);
    if (min > max)
      throw new GrammarError(`${field}.minItems`, "no array length satisfies minItems, maxItems and items");
    const elems = prefix.map((p, i) => this.compile(p, `${field}.prefixItems[${i}]`));
    const itemNode =
      max > k
        ? items === undefined || items === true
          ? this.any()
          : this.compile(items, `${field}.items`)
        : EMPTY;
    const elem = (i: number) => (i < k ? elems[i]! : itemNode);
    const tail = (i: number): Node => {
      if (i >= max) return EMPTY;
      if (i >= k) return rep(seq(lit(","), itemNode), Math.max(0, min - i), max - i);
      const x = seq(lit(","), elem(i), tail(i + 1));
      return i < min ? x : opt(x);
    };
    const body = max === 0 ? EMPTY : min >= 1 ? seq(elem(0), tail(1)) : opt(seq(elem(0), tail(1)));
    return seq(lit("["), body, lit("]"));
  }
}

function count(x: unknown, field: string): number | undefined {
  if (x === undefined) return undefined;
  if (typeof x !== "number" || !Number.isInteger(x) || x < 0)
    throw new GrammarError(field, "must be a non-negative integer");
  if (x > 10_000) throw new GrammarError(field, "over 10000 is not supported");
  return x;
}

function jsonType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

function inferTypes(s: Schema): string[] | undefined {
  const has = (kws: string[]) => kws.some((k) => s[k] !== undefined);
  const out: string[] = [];
  if (has(OBJECT_KW)) out.push("object");
  if (has(ARRAY_KW)) out.push("array");
  if (has(STRING_KW)) out.push("string");
  if (has(NUMBER_KW)) out.push("number");
  if (out.length === 0) return s.nullable === true ? undefined : undefined;
  if (s.nullable === true) out.push("null");
  return out;
}
