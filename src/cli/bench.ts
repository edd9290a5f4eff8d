import { randomInt } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { type BenchConfig, type BenchTargetSpec, runBench } from "../bench/bench.js";
import type { ApiKind } from "../bench/client.js";
import type { LoadShape } from "../bench/load.js";
import type { Slo } from "../bench/metrics.js";
import { BenchProgress } from "../bench/progress.js";
import {
  compareRuns,
  comparisonTable,
  describeWorkload,
  jsonResult,
  runTable,
  summaryTable,
  sweepTable,
} from "../bench/report.js";
import { writeReport } from "../bench/report-dir.js";
import { PROTOCOLS, type Protocol } from "../bench/rpc-client.js";
import {
  isScenario,
  SCENARIO_CONCURRENCY,
  SCENARIO_NUM_PROMPTS,
  SCENARIOS,
  type ScenarioName,
  scenarioWorkload,
} from "../bench/scenarios.js";
import type { CacheScenario, WorkloadSpec } from "../bench/workload.js";
import { SpindleError } from "../errors.js";

export const BENCH_USAGE = `usage: spindle bench [--base-url URL] [options]

Load-tests any OpenAI-compatible server (Spindle, vLLM, llama.cpp's llama-server) with streaming
requests and reports what vLLM's \`bench serve\` reports (TTFT, TPOT, ITL, E2E latency, throughput,
goodput), measured from the client's own stream timestamps.

target
  --base-url URL            server to measure (default http://127.0.0.1:8000)
  --api completions|chat    /v1/completions (default) or /v1/chat/completions
  --endpoint PATH           another path for the same protocol
  --model NAME              model to ask for (default: the first of GET /v1/models)
  --api-key KEY             bearer key; repeat it for several tenants (requests go round-robin)
  --compare-url URL         also run every load against this server, interleaved; prints B/A ratios
  --compare A=URL,B=URL     the same with two labeled targets
  --labels A,B              names of the base and compare targets (default base,compare)
  --rounds N                split each run into N batches sent A B, B A, ... (default 1, 2 when comparing)
  --protocol P              http (default: the OpenAI API over SSE) | connect | grpc: Spindle's RPC service
                            (spindle.v1.InferenceService GenerateStream), Connect over HTTP/1.1 or gRPC
                            over HTTP/2; model, /tokenize and /metrics as their RPC or --base-url's
  --rpc-url URL             where the RPC service listens (default --base-url; gRPC needs the server's
                            --grpc-port, e.g. http://127.0.0.1:8001)

load (every run is bounded by --num-prompts and --max-seconds)
  --concurrency LIST        closed loop at each concurrency, e.g. 1,2,4,8,16,32 (default 1; 100 with --scenario)
  --request-rate LIST       open loop at each rate in req/s (inf = all at once), instead of --concurrency
  --burstiness B            gamma-distributed arrivals; 1 = Poisson (default 1)
  --max-concurrency N       cap on requests in flight in the open loop
  --num-prompts N           requests per run (default 100; 1000 with --scenario)
  --max-seconds S           time bound per run; in-flight requests are then cut off (default 300)
  --warmup N                unmeasured requests per target before the first run (default 2)
  --seed N                  same seed, same prompts and arrivals (default: a fresh one, printed; a
                            server's prefix cache would remember the prompts of an earlier run)
  --grace-seconds S         after Ctrl-C, how long in-flight requests may finish (default 5)

workload
  --scenario NAME           a named scenario (default 1000 requests at concurrency 100):
                            cache-miss: every prompt its own (--prefix-len + --suffix-len tokens);
                            cache-hit: one shared --prefix-len prefix (primed) + own suffixes;
                            mixed-prompt: half long (one of --num-groups shared prefixes + a suffix),
                            half short (--short-len, unshared); reports prefix hits and tokens saved
  --workload KIND           random (default) | copy | shared-prefix | priority
                            copy: a passage written --copies times (default 3; --input-len in all),
                            so the output copies the input (speculative decoding's case); random: it does not
  --input-len N             prompt tokens (default 128)
  --output-len N            output tokens (default 64); exact: ignore_eos is sent
  --range-ratio R           lengths uniform in [L(1-R), L(1+R)] (default 0)
  --allow-eos               do not send ignore_eos (outputs may end early)
  --temperature T           sampling temperature sent (default 0)
  --no-tokenize             do not use the target's /tokenize (prompt lengths then estimated)
  --structured F            this share (0..1) of requests asks for a JSON schema (response_format);
                            metrics per class: structured, unconstrained
  shared-prefix:
  --num-groups G            prefix groups (default 8)
  --prompts-per-group P     prompts per group (default 8)
  --prefix-len N            shared prefix tokens (default 256)
  --suffix-len N            tokens after the prefix (default 32)
  --cache-scenario S        miss (no sharing) | hit (prefixes primed) | mixed (half primed) (default hit)
  --short-len N             mixed-prompt scenario: short prompts' tokens (default 32)
  priority:
  --backlog N               low-priority requests sent at the start (default --num-prompts)
  --high-priority P         priority sent with the arrivals (default 0; lower = more urgent)
  --low-priority P          priority sent with the backlog (default 10)

metrics and output
  --slo LIST                goodput SLOs in ms, e.g. ttft:500,tpot:50 (also e2el:MS)
  --metrics-interval-ms N   poll the server's engine metrics this often during a run (default 500; 0 = off)
  --no-server-metrics       do not scrape /metrics
  --result-file PATH        write the JSON result (vLLM's metric keys per run)
  --save-detailed           put every request's timeline in the JSON result
  --report DIR              write report.md, result.json and charts (SVG and PNG) to DIR
  --font FILE.ttf           font for the PNG charts' text (default: a system DejaVu/Liberation/Arial)
  --quiet                   no progress bar

Ctrl-C stops sending, waits up to --grace-seconds for what is in flight, and prints what was measured.`;

export interface BenchIO {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean; columns?: number };
  /** Handle Ctrl-C (default true). */
  handleSigint?: boolean;
}

const list = (s: string) =>
  s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x.length > 0);

function num(
  name: string,
  v: string,
  opts: { int?: boolean; min?: number; allowInf?: boolean } = {},
): number {
  const n = opts.allowInf && /^(inf|infinity)$/i.test(v.trim()) ? Infinity : Number(v);
  const bad =
    Number.isNaN(n) ||
    (!opts.allowInf && !Number.isFinite(n)) ||
    (opts.int && Number.isFinite(n) && !Number.isInteger(n)) ||
    (opts.min !== undefined && n < opts.min);
  if (bad) {
    const what = opts.int ? "an integer" : "a number";
    throw new SpindleError(
      `--${name} must be ${what}${opts.min !== undefined ? ` ≥ ${opts.min}` : ""}, got "${v}"`,
    );
  }
  return n;
}

function checkUrl(url: string): void {
  try {
    new URL(url);
  } catch {
    throw new SpindleError(`not a URL: "${url}"`);
  }
}

/** "ttft:500,tpot:50" → {ttftMs: 500, tpotMs: 50}. */
export function parseSlo(s: string): Slo {
  const slo: Slo = {};
  for (const part of list(s)) {
    const [k, v] = part.split(":");
    const ms = num("slo", v ?? "", { min: 0 });
    if (k === "ttft") slo.ttftMs = ms;
    else if (k === "tpot") slo.tpotMs = ms;
    else if (k === "e2el" || k === "e2e") slo.e2elMs = ms;
    else throw new SpindleError(`--slo: unknown metric "${k}" (ttft, tpot, e2el)`);
  }
  return slo;
}

function structuredShare(v: string): number {
  const f = Number(v);
  if (!(f >= 0 && f <= 1))
    throw new SpindleError(`--structured must be a fraction between 0 and 1, got "${v}"`);
  return f;
}

/** Turns the command line into a benchmark configuration (and what to do with the result). */
export function parseBenchArgs(args: string[]) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      "base-url": { type: "string", default: "http://127.0.0.1:8000" },
      api: { type: "string", default: "completions" },
      endpoint: { type: "string" },
      model: { type: "string", short: "m" },
      "api-key": { type: "string", multiple: true },
      "compare-url": { type: "string" },
      compare: { type: "string" },
      labels: { type: "string" },
      rounds: { type: "string" },
      protocol: { type: "string", default: "http" },
      "rpc-url": { type: "string" },
      scenario: { type: "string" },
      "short-len": { type: "string", default: "32" },
      concurrency: { type: "string", short: "c" },
      "request-rate": { type: "string" },
      burstiness: { type: "string", default: "1" },
      "max-concurrency": { type: "string" },
      "num-prompts": { type: "string", short: "n" },
      "max-seconds": { type: "string", default: "300" },
      warmup: { type: "string", default: "2" },
      seed: { type: "string" },
      "grace-seconds": { type: "string", default: "5" },
      workload: { type: "string" },
      copies: { type: "string" },
      "input-len": { type: "string", default: "128" },
      "output-len": { type: "string", default: "64" },
      "range-ratio": { type: "string", default: "0" },
      "allow-eos": { type: "boolean", default: false },
      temperature: { type: "string", default: "0" },
      "no-tokenize": { type: "boolean", default: false },
      structured: { type: "string", default: "0" },
      "num-groups": { type: "string", default: "8" },
      "prompts-per-group": { type: "string", default: "8" },
      "prefix-len": { type: "string", default: "256" },
      "suffix-len": { type: "string", default: "32" },
      "cache-scenario": { type: "string" },
      backlog: { type: "string" },
      "high-priority": { type: "string", default: "0" },
      "low-priority": { type: "string", default: "10" },
      slo: { type: "string" },
      "metrics-interval-ms": { type: "string", default: "500" },
      "no-server-metrics": { type: "boolean", default: false },
      "result-file": { type: "string" },
      "save-detailed": { type: "boolean", default: false },
      report: { type: "string" },
      font: { type: "string" },
      quiet: { type: "boolean", short: "q", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return { help: true as const };
  if (positionals.length) throw new SpindleError(`unexpected argument "${positionals[0]}"`);

  const api = values.api as ApiKind;
  if (api !== "completions" && api !== "chat")
    throw new SpindleError(`--api must be completions or chat, got "${api}"`);
  const protocol = values.protocol as Protocol;
  if (!PROTOCOLS.includes(protocol))
    throw new SpindleError(`--protocol must be ${PROTOCOLS.join(", ")}, got "${values.protocol}"`);
  let rpcUrl = values["rpc-url"];
  if (rpcUrl !== undefined) {
    if (protocol === "http") throw new SpindleError("--rpc-url goes with --protocol connect or grpc");
    checkUrl(rpcUrl);
    rpcUrl = rpcUrl.replace(/\/+$/, "");
  }
  const scenario = values.scenario;
  if (scenario !== undefined) {
    if (!isScenario(scenario))
      throw new SpindleError(`--scenario must be ${SCENARIOS.join(", ")}, got "${scenario}"`);
    if (values.workload !== undefined || values["cache-scenario"] !== undefined)
      throw new SpindleError("--scenario names its own workload: leave out --workload and --cache-scenario");
  }
  const keys = values["api-key"] ?? [];
  const labels = values.labels ? list(values.labels) : [];
  const targets: BenchTargetSpec[] = [];
  const spec = (label: string, baseUrl: string): BenchTargetSpec => {
    checkUrl(baseUrl);
    return {
      label,
      baseUrl,
      api,
      model: values.model,
      endpoint: values.endpoint,
      apiKeys: keys,
      protocol,
      rpcUrl,
    };
  };
  if (values.compare) {
    const pairs = list(values.compare).map((p) => {
      const i = p.indexOf("=");
      if (i <= 0) throw new SpindleError(`--compare takes LABEL=URL,LABEL=URL, got "${p}"`);
      return spec(p.slice(0, i), p.slice(i + 1));
    });
    if (pairs.length !== 2) throw new SpindleError("--compare takes exactly two LABEL=URL targets");
    targets.push(...pairs);
  } else {
    targets.push(spec(labels[0] ?? "base", values["base-url"]));
    if (values["compare-url"]) targets.push(spec(labels[1] ?? "compare", values["compare-url"]));
  }
  if (targets.length === 2 && rpcUrl !== undefined)
    throw new SpindleError(
      "--rpc-url names one RPC service: compare two servers over RPC by their --base-url",
    );
  if (targets.length === 2 && targets[0]!.label === targets[1]!.label)
    throw new SpindleError("the two targets need different labels (--labels A,B)");

  const shapes: LoadShape[] = [];
  if (values["request-rate"] !== undefined) {
    if (values.concurrency !== undefined)
      throw new SpindleError(
        "--request-rate or --concurrency, not both (--max-concurrency caps the open loop)",
      );
    const burstiness = num("burstiness", values.burstiness, { min: Number.MIN_VALUE });
    const maxConcurrency =
      values["max-concurrency"] !== undefined
        ? num("max-concurrency", values["max-concurrency"], { int: true, min: 1 })
        : undefined;
    for (const r of list(values["request-rate"]))
      shapes.push({
        kind: "open",
        rate: num("request-rate", r, { min: Number.MIN_VALUE, allowInf: true }),
        burstiness,
        maxConcurrency,
      });
  } else {
    for (const c of list(values.concurrency ?? (scenario ? String(SCENARIO_CONCURRENCY) : "1")))
      shapes.push({ kind: "closed", concurrency: num("concurrency", c, { int: true, min: 1 }) });
  }
  if (shapes.length === 0) throw new SpindleError("no load to run: --concurrency or --request-rate is empty");

  const numPrompts = num(
    "num-prompts",
    values["num-prompts"] ?? String(scenario ? SCENARIO_NUM_PROMPTS : 100),
    { int: true, min: 1 },
  );
  const inputLen = num("input-len", values["input-len"], { int: true, min: 1 });
  const outputLen = num("output-len", values["output-len"], { int: true, min: 1 });
  const rangeRatio = num("range-ratio", values["range-ratio"], { min: 0 });
  if (rangeRatio >= 1) throw new SpindleError(`--range-ratio must be below 1, got ${rangeRatio}`);
  let workload: WorkloadSpec;
  const lengths = () => ({
    prefixLen: num("prefix-len", values["prefix-len"], { int: true, min: 1 }),
    suffixLen: num("suffix-len", values["suffix-len"], { int: true, min: 1 }),
  });
  switch (scenario ? "scenario" : (values.workload ?? "random")) {
    case "scenario":
      workload = scenarioWorkload(scenario as ScenarioName, numPrompts, {
        ...lengths(),
        shortLen: num("short-len", values["short-len"], { int: true, min: 1 }),
        outputLen,
        groups: num("num-groups", values["num-groups"], { int: true, min: 1 }),
      });
      break;
    case "random":
      workload = { kind: "random", inputLen, outputLen, rangeRatio };
      break;
    case "copy":
      workload = {
        kind: "copy",
        inputLen,
        outputLen,
        rangeRatio,
        copies: num("copies", values.copies ?? "3", { int: true, min: 2 }),
      };
      break;
    case "shared-prefix": {
      const cache = (values["cache-scenario"] ?? "hit") as CacheScenario;
      if (!["miss", "hit", "mixed"].includes(cache))
        throw new SpindleError(`--cache-scenario must be miss, hit or mixed, got "${cache}"`);
      workload = {
        kind: "shared-prefix",
        groups: num("num-groups", values["num-groups"], { int: true, min: 1 }),
        promptsPerGroup: num("prompts-per-group", values["prompts-per-group"], { int: true, min: 1 }),
        ...lengths(),
        outputLen,
        scenario: cache,
      };
      break;
    }
    case "priority":
      workload = {
        kind: "priority",
        inputLen,
        outputLen,
        rangeRatio,
        backlog:
          values.backlog !== undefined ? num("backlog", values.backlog, { int: true, min: 0 }) : numPrompts,
        highPriority: num("high-priority", values["high-priority"], { int: true }),
        lowPriority: num("low-priority", values["low-priority"], { int: true }),
      };
      break;
    default:
      throw new SpindleError(
        `--workload must be random, copy, shared-prefix or priority, got "${values.workload}"`,
      );
  }

  const config: BenchConfig = {
    targets,
    shapes,
    workload,
    numPrompts,
    maxSeconds: num("max-seconds", values["max-seconds"], { min: Number.MIN_VALUE }),
    warmup: num("warmup", values.warmup, { int: true, min: 0 }),
    // A fresh seed by default: a server's prefix cache remembers the prompts of an earlier run.
    seed: values.seed !== undefined ? num("seed", values.seed, { int: true }) : randomInt(2 ** 31),
    ignoreEos: !values["allow-eos"],
    temperature: num("temperature", values.temperature, { min: 0 }),
    slo: values.slo !== undefined ? parseSlo(values.slo) : undefined,
    rounds:
      values.rounds !== undefined
        ? num("rounds", values.rounds, { int: true, min: 1 })
        : targets.length === 2
          ? 2
          : 1,
    graceMs: num("grace-seconds", values["grace-seconds"], { min: 0 }) * 1000,
    metricsIntervalMs: num("metrics-interval-ms", values["metrics-interval-ms"], { int: true, min: 0 }),
    serverMetrics: !values["no-server-metrics"],
    tokenize: !values["no-tokenize"],
    structured: structuredShare(values.structured),
    ...(scenario ? { scenario: scenario as ScenarioName } : {}),
  };
  return {
    help: false as const,
    config,
    resultFile: values["result-file"],
    saveDetailed: values["save-detailed"],
    report: values.report,
    font: values.font,
    quiet: values.quiet,
  };
}

/** `spindle bench`: returns 0, or 130 when interrupted, 1 when no request succeeded. */
export async function benchCommand(args: string[], io?: BenchIO): Promise<number> {
  const out = io?.stdout ?? process.stdout;
  const err = io?.stderr ?? process.stderr;
  const parsed = parseBenchArgs(args);
  if (parsed.help) {
    out.write(`${BENCH_USAGE}\n`);
    return 0;
  }
  const { config } = parsed;
  const stop = new AbortController();
  const kill = new AbortController();
  const onSigint = () => {
    if (!stop.signal.aborted) {
      err.write(
        `\nstopping: no more requests; waiting up to ${config.graceMs / 1000} s for those in flight (Ctrl-C again to cut them off)\n`,
      );
      stop.abort();
    } else kill.abort();
  };
  const handle = io?.handleSigint ?? true;
  if (handle) process.on("SIGINT", onSigint);

  err.write(`workload: ${describeWorkload(config.workload, config.scenario)}; seed ${config.seed}\n`);
  let bar: BenchProgress | undefined;
  let printed = 0;
  try {
    const result = await runBench(config, {
      stop: stop.signal,
      kill: kill.signal,
      log: (line) => err.write(`${line}\n`),
      onRunStart: (target, label) => {
        if (!parsed.quiet) bar = new BenchProgress(`${target}  ${label}`, err);
      },
      onProgress: (p) => bar?.update(p),
      onRunEnd: () => {
        bar?.done();
        bar = undefined;
      },
      onResults: (runs) => {
        for (const r of runs) out.write(`${runTable(r)}\n`);
        printed += runs.length;
      },
    });
    // Each run's table was printed as its load point finished; then the sweep and the comparisons.
    for (const r of result.runs.slice(printed)) out.write(`${runTable(r)}\n`);
    if (result.runs.length > 1) out.write(sweepTable(result.runs));
    if (config.scenario) out.write(`\n${summaryTable(result)}`);
    for (const c of compareRuns(result)) out.write(`\n${comparisonTable(c)}`);
    if (result.interrupted)
      out.write("\n(interrupted: the results above are what was measured until Ctrl-C)\n");

    if (parsed.resultFile) {
      mkdirSync(dirname(parsed.resultFile), { recursive: true });
      writeFileSync(
        parsed.resultFile,
        `${JSON.stringify(jsonResult(result, { detailed: parsed.saveDetailed }), null, 2)}\n`,
      );
      err.write(`result: ${parsed.resultFile}\n`);
    }
    if (parsed.report) {
      const files = await writeReport(parsed.report, result, { font: parsed.font });
      for (const n of files.notes) err.write(`note: ${n}\n`);
      err.write(`report: ${files.markdown}\n`);
    }
    if (result.interrupted) return 130;
    const anyOk = result.runs.some((r) => r.metrics.completed > 0);
    return anyOk ? 0 : 1;
  } finally {
    bar?.done();
    if (handle) process.off("SIGINT", onSigint);
  }
}
