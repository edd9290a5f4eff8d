import type { BenchResult, RunResult } from "./bench.js";
import { describeShape } from "./load.js";
import type { GroupMetrics, RunMetrics, Stats } from "./metrics.js";
import type { ServerRunMetrics } from "./server-metrics.js";
import type { WorkloadSpec } from "./workload.js";

/**
 * The benchmark's outputs: the text table (vLLM `bench serve`'s layout, one
 * per run, then extra sections for the server's metrics, classes and tenants),
 * a sweep summary, B/A comparison tables, the JSON result (vLLM's flat metric
 * keys per run, plus the structured extras), and the Markdown report.
 */

const LATENCIES = [
  ["ttft", "TTFT", "Time to First Token"],
  ["tpot", "TPOT", "Time per Output Token (excl. 1st token)"],
  ["itl", "ITL", "Inter-token Latency"],
  ["e2el", "E2EL", "End-to-end Latency"],
] as const;

const STAT_KEYS = ["mean", "median", "std", "p90", "p99", "min", "max"] as const;

/** vLLM's flat result keys: completed, request_throughput, mean_ttft_ms, p99_itl_ms, … */
export function flatMetrics(m: RunMetrics): Record<string, number | null> {
  const out: Record<string, number | null> = {
    completed: m.completed,
    failed: m.failed,
    duration: m.durationS,
    total_input_tokens: m.totalInputTokens,
    total_output_tokens: m.totalOutputTokens,
    request_throughput: m.requestThroughput,
    request_goodput: m.requestGoodput ?? null,
    output_throughput: m.outputThroughput,
    total_token_throughput: m.totalTokenThroughput,
  };
  for (const [k] of LATENCIES) {
    const s: Stats = m[k];
    for (const stat of STAT_KEYS) out[`${stat}_${k}_ms`] = Number.isFinite(s[stat]) ? s[stat] : null;
  }
  return out;
}

/** Python's "{:c^n}".format(s): centered, the odd pad to the right. */
export function center(s: string, width: number, fill: string): string {
  const pad = Math.max(0, width - s.length);
  const left = Math.floor(pad / 2);
  return fill.repeat(left) + s + fill.repeat(pad - left);
}

const fmt = (v: number | null | undefined, digits = 2) =>
  v === null || v === undefined || !Number.isFinite(v) ? "nan" : v.toFixed(digits);
const row = (label: string, value: string | number) => `${label.padEnd(40)} ${value}`.trimEnd();

function workloadLine(w: WorkloadSpec): string {
  if (w.kind === "random")
    return `random prompts: input ${w.inputLen}, output ${w.outputLen} tokens${w.rangeRatio ? `, range ratio ${w.rangeRatio}` : ""}`;
  if (w.kind === "copy")
    return `copy: a passage of ~${Math.round(w.inputLen / w.copies)} tokens written ${w.copies} times (the output copies it), output ${w.outputLen} tokens${w.rangeRatio ? `, range ratio ${w.rangeRatio}` : ""}`;
  if (w.kind === "shared-prefix")
    return `shared prefix (${w.scenario}): ${w.groups} groups x ${w.promptsPerGroup} prompts, prefix ${w.prefixLen} + suffix ${w.suffixLen} tokens, output ${w.outputLen}`;
  if (w.kind === "mixed-prompt")
    return `mixed prompts: ${Math.round(w.longFraction * 100)}% long (one of ${w.groups} shared prefixes of ${w.prefixLen} + ~${w.suffixLen} tokens), the rest short (~${w.shortLen} tokens, unshared), output ${w.outputLen}`;
  return `priority: backlog of ${w.backlog} (priority ${w.lowPriority}) + arrivals (priority ${w.highPriority}); input ${w.inputLen}, output ${w.outputLen} tokens`;
}

export function describeWorkload(w: WorkloadSpec, scenario?: string): string {
  return scenario ? `${scenario}: ${workloadLine(w)}` : workloadLine(w);
}

/**
 * What the prefix cache saved in a run: requests that hit it and prompt tokens it served (prefill
 * saved). From the server's /metrics when it exports them (the run's increments), else from the
 * requests' own usage (`cached_tokens`).
 */
export function prefixSaving(
  r: RunResult,
): { hitRequests: number | null; tokensSaved: number; from: "server" | "usage" } | undefined {
  const p = r.server?.prefixCache;
  if (p)
    return { hitRequests: p.hitRequests ?? r.cacheHitRequests ?? null, tokensSaved: p.hits, from: "server" };
  if (r.cachedPromptTokens !== undefined)
    return { hitRequests: r.cacheHitRequests ?? null, tokensSaved: r.cachedPromptTokens, from: "usage" };
  return undefined;
}

/**
 * The named scenarios' summary: one line per run with what the scenarios report (throughput, mean
 * latency, mean TTFT, mean time between tokens, prefix hits and tokens saved), the protocol beside
 * the target.
 */
export function summaryTable(result: BenchResult): string {
  const protocolOf = new Map(result.targets.map((t) => [t.label, t.protocol]));
  const head = [
    "scenario",
    "target",
    "protocol",
    "load",
    "ok",
    "fail",
    "req/s",
    "out tok/s",
    "mean lat",
    "mean TTFT",
    "mean ITL",
    "prefix hits",
    "tokens saved",
  ];
  const rows = result.runs.map((r) => {
    const m = r.metrics;
    const p = prefixSaving(r);
    return [
      result.config.scenario ?? result.config.workload.kind,
      r.target,
      protocolOf.get(r.target) ?? "http",
      r.loadLabel,
      String(m.completed),
      String(m.failed),
      fmt(m.requestThroughput),
      fmt(m.outputThroughput, 1),
      fmt(m.e2el.mean, 1),
      fmt(m.ttft.mean, 1),
      fmt(m.itl.mean, 1),
      p?.hitRequests === null || p === undefined ? "-" : String(p.hitRequests),
      p === undefined ? "-" : `${p.tokensSaved}${p.from === "usage" ? " (usage)" : ""}`,
    ];
  });
  return `${alignTable([head, ...rows])}\n(latencies in ms; ITL: mean time between tokens; prefix hits: requests that found cached blocks)\n`;
}

function serverLines(s: ServerRunMetrics): string[] {
  const lines = [center(`Server (${s.kind})`, 50, "-")];
  if (s.batchSize) {
    lines.push(row("Engine steps:", s.batchSize.steps));
    lines.push(row("Mean batch size (seqs/step):", fmt(s.batchSize.mean)));
    const dist = s.batchSize.buckets
      .filter((b) => b.count > 0)
      .map((b) => `${b.label}:${b.count}`)
      .join(" ");
    lines.push(row("Batch size distribution (steps):", dist || "-"));
  }
  if (s.iterationTokens) lines.push(row("Mean tokens per step:", fmt(s.iterationTokens.mean)));
  if (s.prefixCache)
    lines.push(
      row(
        "Prefix cache hit rate (%):",
        s.prefixCache.hitRate === null ? "nan" : fmt(s.prefixCache.hitRate * 100),
      ),
    );
  if (s.preemptions !== undefined) lines.push(row("Preemptions:", s.preemptions));
  if (s.specDecode) {
    const d = s.specDecode;
    lines.push(row("Speculative drafts (tokens):", `${d.drafts} (${d.draftTokens})`));
    lines.push(
      row(
        "Draft acceptance rate (%):",
        fmt(d.draftTokens > 0 ? (d.acceptedTokens / d.draftTokens) * 100 : NaN),
      ),
    );
  }
  lines.push(row("Peak KV cache usage (%):", s.kvUsage.peak === null ? "nan" : fmt(s.kvUsage.peak * 100)));
  if (s.peakWaiting !== null) lines.push(row("Peak waiting requests:", s.peakWaiting));
  if (s.serverMeanMs.queue !== undefined)
    lines.push(row("Mean server queue time (ms):", fmt(s.serverMeanMs.queue)));
  return lines;
}

function groupLines(title: string, groups: Record<string, GroupMetrics>, jain?: number): string[] {
  const lines = [center(title, 50, "-")];
  for (const [k, g] of Object.entries(groups)) {
    lines.push(row(`[${k}] Successful / sent:`, `${g.completed}/${g.sent}`));
    lines.push(row(`[${k}] Output throughput (tok/s):`, fmt(g.outputThroughput)));
    lines.push(row(`[${k}] Median TTFT (ms):`, fmt(g.ttft.median)));
    lines.push(row(`[${k}] P99 TTFT (ms):`, fmt(g.ttft.p99)));
    lines.push(row(`[${k}] Median TPOT (ms):`, fmt(g.tpot.median)));
    lines.push(
      row(`[${k}] Median queue wait (ms)${g.queueWaitFromServer ? "" : " [TTFT]"}:`, fmt(g.queueWait.median)),
    );
    if (g.starved) lines.push(row(`[${k}] Starved (no first token):`, g.starved));
  }
  if (jain !== undefined) lines.push(row("Jain's fairness index:", fmt(jain, 4)));
  return lines;
}

/** One run's result in the layout of vLLM's `bench serve` table, with Spindle's extras below. */
export function runTable(r: RunResult, percentiles: number[] = [50, 90, 99]): string {
  const m = r.metrics;
  const lines = [center(" Serving Benchmark Result ", 50, "=")];
  lines.push(row("Target:", r.target));
  lines.push(row("Load:", r.loadLabel));
  lines.push(row("Successful requests:", m.completed));
  lines.push(row("Failed requests:", m.failed));
  if (r.shape.kind === "closed") lines.push(row("Maximum request concurrency:", r.shape.concurrency));
  else {
    lines.push(
      row("Request rate configured (RPS):", Number.isFinite(r.shape.rate) ? fmt(r.shape.rate) : "inf"),
    );
    if (r.shape.maxConcurrency) lines.push(row("Maximum request concurrency:", r.shape.maxConcurrency));
  }
  lines.push(row("Benchmark duration (s):", fmt(m.durationS)));
  lines.push(row("Total input tokens:", m.totalInputTokens));
  lines.push(row("Total generated tokens:", m.totalOutputTokens));
  lines.push(row("Request throughput (req/s):", fmt(m.requestThroughput)));
  if (m.requestGoodput !== undefined) lines.push(row("Request goodput (req/s):", fmt(m.requestGoodput)));
  lines.push(row("Output token throughput (tok/s):", fmt(m.outputThroughput)));
  lines.push(row("Total Token throughput (tok/s):", fmt(m.totalTokenThroughput)));
  for (const [k, short, title] of LATENCIES) {
    const s: Stats = m[k];
    lines.push(center(title, 50, "-"));
    lines.push(row(`Mean ${short} (ms):`, fmt(s.mean)));
    for (const p of percentiles) {
      if (p === 50) lines.push(row(`Median ${short} (ms):`, fmt(s.median)));
      else lines.push(row(`P${p} ${short} (ms):`, fmt(p === 90 ? s.p90 : p === 99 ? s.p99 : Number.NaN)));
    }
  }
  if (m.failed > 0) {
    lines.push(center("Failed Requests", 50, "-"));
    for (const [reason, n] of Object.entries(m.errors).sort((a, b) => b[1] - a[1]))
      lines.push(row(`${reason}:`, n));
  }
  if (r.timedOut || r.interrupted || r.notSent > 0) {
    lines.push(
      row(
        "Run ended early:",
        `${r.timedOut ? "time bound reached" : "interrupted"}; ${r.notSent} requests not sent, ${m.starved} starved`,
      ),
    );
  }
  if (r.server) lines.push(...serverLines(r.server));
  const saving = prefixSaving(r);
  if (saving) {
    const from = saving.from === "server" ? "" : " (usage)";
    if (saving.hitRequests !== null)
      lines.push(row(`Prefix cache hits (requests)${from}:`, saving.hitRequests));
    lines.push(row(`Prefix cache tokens saved${from}:`, saving.tokensSaved));
  }
  if (r.cachedPromptTokens !== undefined && m.totalInputTokens > 0)
    lines.push(
      row("Prompt tokens from cache (usage, %):", fmt((100 * r.cachedPromptTokens) / m.totalInputTokens)),
    );
  if (r.classes) lines.push(...groupLines("Per Class", r.classes));
  if (r.tenants) lines.push(...groupLines("Per Tenant", r.tenants, r.jainFairness));
  lines.push("=".repeat(50));
  return `${lines.join("\n")}\n`;
}

/** Pads a table of strings into aligned columns (first column left, others right). */
export function alignTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  return rows
    .map((r) =>
      r
        .map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** One line per run: the sweep at a glance. */
export function sweepTable(runs: RunResult[]): string {
  const head = [
    "target",
    "load",
    "ok",
    "fail",
    "req/s",
    "out tok/s",
    "TTFT p50",
    "TTFT p99",
    "TPOT p50",
    "ITL p50",
    "E2EL p50",
    "E2EL p99",
  ];
  const rows = runs.map((r) => {
    const m = r.metrics;
    return [
      r.target,
      r.loadLabel,
      String(m.completed),
      String(m.failed),
      fmt(m.requestThroughput),
      fmt(m.outputThroughput, 1),
      fmt(m.ttft.median, 1),
      fmt(m.ttft.p99, 1),
      fmt(m.tpot.median, 1),
      fmt(m.itl.median, 1),
      fmt(m.e2el.median, 1),
      fmt(m.e2el.p99, 1),
    ];
  });
  return `${alignTable([head, ...rows])}\n(latencies in ms)\n`;
}

/** Metrics compared B/A, in the order printed. */
export const COMPARED = [
  "request_throughput",
  "output_throughput",
  "total_token_throughput",
  "request_goodput",
  "mean_ttft_ms",
  "median_ttft_ms",
  "p90_ttft_ms",
  "p99_ttft_ms",
  "mean_tpot_ms",
  "median_tpot_ms",
  "p99_tpot_ms",
  "mean_itl_ms",
  "median_itl_ms",
  "p99_itl_ms",
  "mean_e2el_ms",
  "median_e2el_ms",
  "p99_e2el_ms",
] as const;

export interface Comparison {
  load: string;
  a: string;
  b: string;
  /** metric → {a, b, ratio b/a}. */
  metrics: Record<string, { a: number | null; b: number | null; ratio: number | null }>;
}

/** B/A ratios per metric for every load point both targets ran. */
export function compareRuns(result: BenchResult): Comparison[] {
  if (result.targets.length < 2) return [];
  const [A, B] = [result.targets[0]!.label, result.targets[1]!.label];
  const out: Comparison[] = [];
  const loads = [...new Set(result.runs.map((r) => r.loadLabel))];
  for (const load of loads) {
    const ra = result.runs.find((r) => r.loadLabel === load && r.target === A);
    const rb = result.runs.find((r) => r.loadLabel === load && r.target === B);
    if (!ra || !rb) continue;
    const fa = flatMetrics(ra.metrics);
    const fb = flatMetrics(rb.metrics);
    const metrics: Comparison["metrics"] = {};
    for (const k of COMPARED) {
      const a = fa[k] ?? null;
      const b = fb[k] ?? null;
      if (a === null && b === null) continue;
      metrics[k] = { a, b, ratio: a !== null && b !== null && a !== 0 ? b / a : null };
    }
    out.push({ load, a: A, b: B, metrics });
  }
  return out;
}

export function comparisonTable(c: Comparison): string {
  const rows = [["metric", c.a, c.b, `${c.b}/${c.a}`]];
  for (const [k, v] of Object.entries(c.metrics)) rows.push([k, fmt(v.a), fmt(v.b), fmt(v.ratio, 3)]);
  return `${center(` Comparison: ${c.load} `, 50, "=")}\n${alignTable(rows)}\n`;
}

/** The whole text output: a table per run, the sweep summary, the comparisons. */
export function textReport(result: BenchResult): string {
  const parts = result.runs.map((r) => runTable(r));
  if (result.runs.length > 1) parts.push(sweepTable(result.runs));
  for (const c of compareRuns(result)) parts.push(comparisonTable(c));
  if (result.interrupted) parts.push("(interrupted: the results above are what was measured until Ctrl-C)\n");
  return parts.join("\n");
}

function shapeJson(r: RunResult) {
  const s = r.shape;
  if (s.kind === "closed") return { kind: "closed", max_concurrency: s.concurrency };
  return {
    kind: "open",
    request_rate: Number.isFinite(s.rate) ? s.rate : "inf",
    burstiness: s.burstiness,
    max_concurrency: s.maxConcurrency ?? null,
  };
}

function groupJson(g: Record<string, GroupMetrics>) {
  return Object.fromEntries(
    Object.entries(g).map(([k, v]) => [
      k,
      {
        sent: v.sent,
        completed: v.completed,
        failed: v.failed,
        output_tokens: v.outputTokens,
        output_throughput: v.outputThroughput,
        request_throughput: v.requestThroughput,
        ttft_ms: statsJson(v.ttft),
        tpot_ms: statsJson(v.tpot),
        queue_wait_ms: statsJson(v.queueWait),
        queue_wait_from: v.queueWaitFromServer ? "server" : "ttft",
        starved: v.starved,
      },
    ]),
  );
}

function statsJson(s: Stats) {
  return Object.fromEntries(
    ["count", ...STAT_KEYS].map((k) => [
      k,
      Number.isFinite(s[k as keyof Stats]) ? s[k as keyof Stats] : null,
    ]),
  );
}

export interface JsonOptions {
  /** Keep every request's timeline (ttft, itl, e2el, tokens, error). */
  detailed?: boolean;
}

/** The JSON result: config, targets, one object per run (vLLM's flat keys + extras), comparisons. */
export function jsonResult(result: BenchResult, o: JsonOptions = {}): Record<string, unknown> {
  const cfg = result.config;
  return {
    spindle_bench: 1,
    date: result.startedAt,
    interrupted: result.interrupted,
    config: {
      workload: cfg.workload,
      scenario: cfg.scenario ?? null,
      workload_description: describeWorkload(cfg.workload, cfg.scenario),
      loads: cfg.shapes.map((s) => describeShape(s)),
      num_prompts: cfg.numPrompts,
      max_seconds: cfg.maxSeconds,
      warmup: cfg.warmup,
      seed: cfg.seed,
      ignore_eos: cfg.ignoreEos,
      temperature: cfg.temperature ?? null,
      slo_ms: cfg.slo ?? null,
      rounds: cfg.rounds,
      prompt_lengths: result.promptLengths,
      percentile_method: "linear interpolation (numpy default)",
    },
    targets: result.targets.map((t) => ({
      label: t.label,
      base_url: t.baseUrl,
      api: t.api,
      protocol: t.protocol,
      rpc_url: t.rpcUrl ?? null,
      model: t.model,
      tenants: t.tenants,
      server_metrics: t.serverMetrics,
      tokenizer: t.tokenizer,
      warmup: t.warmup,
    })),
    runs: result.runs.map((r) => ({
      target: r.target,
      load: r.loadLabel,
      ...shapeJson(r),
      sent: r.metrics.sent,
      ...flatMetrics(r.metrics),
      errors: r.metrics.errors,
      not_sent: r.notSent,
      starved: r.metrics.starved,
      timed_out: r.timedOut,
      interrupted: r.interrupted,
      cached_prompt_tokens: r.cachedPromptTokens ?? null,
      prefix_hit_requests: prefixSaving(r)?.hitRequests ?? null,
      prefix_tokens_saved: prefixSaving(r)?.tokensSaved ?? null,
      server: r.server ?? null,
      classes: r.classes ? groupJson(r.classes) : null,
      tenants: r.tenants ? groupJson(r.tenants) : null,
      jain_fairness: r.jainFairness ?? null,
      ...(o.detailed ? { requests: r.requests } : {}),
    })),
    comparisons: compareRuns(result),
  };
}

export interface ChartRef {
  title: string;
  /** File names relative to the report. */
  svg: string;
  png?: string;
}

/** The Markdown report: setup, results table, charts, server metrics, classes/tenants, comparisons. */
export function markdownReport(result: BenchResult, charts: ChartRef[], notes: string[] = []): string {
  const cfg = result.config;
  const md: string[] = [];
  md.push("# Serving benchmark", "");
  md.push(`- Date: ${result.startedAt}`);
  for (const t of result.targets)
    md.push(
      `- Target **${t.label}**: ${t.rpcUrl ? `${t.rpcUrl} (${t.protocol} GenerateStream)` : `${t.baseUrl} (${t.api})`}, model \`${t.model}\`${t.serverMetrics ? `, ${t.serverMetrics} engine metrics` : ""}${t.tenants > 1 ? `, ${t.tenants} tenants` : ""}`,
    );
  md.push(`- Workload: ${describeWorkload(cfg.workload, cfg.scenario)}`);
  md.push(
    `- Prompt lengths: ${result.promptLengths === "exact" ? "exact (target's /tokenize)" : "estimated from words"}; ${cfg.ignoreEos ? "exact output lengths (ignore_eos)" : "outputs may stop early at EOS"}`,
  );
  md.push(
    `- Requests per run: ${cfg.numPrompts}, bounded at ${cfg.maxSeconds} s; warm-up ${cfg.warmup}; seed ${cfg.seed}${cfg.rounds > 1 ? `; ${cfg.rounds} interleaved batches per run` : ""}`,
  );
  if (cfg.slo) md.push(`- SLO (ms): ${JSON.stringify(cfg.slo)}`);
  if (result.interrupted) md.push("- **Interrupted** (Ctrl-C): results are what was measured until then.");
  for (const n of notes) md.push(`- ${n}`);
  md.push("", "## Results", "");
  const head = [
    "target",
    "load",
    "ok",
    "failed",
    "req/s",
    "out tok/s",
    "total tok/s",
    ...(cfg.slo ? ["goodput req/s"] : []),
    ...[
      "TTFT p50",
      "TTFT p90",
      "TTFT p99",
      "TPOT p50",
      "TPOT p99",
      "ITL p50",
      "ITL p99",
      "E2EL p50",
      "E2EL p99",
    ],
  ];
  md.push(`| ${head.join(" | ")} |`, `|${"---|".repeat(head.length)}`);
  for (const r of result.runs) {
    const m = r.metrics;
    const cells = [
      r.target,
      r.loadLabel,
      m.completed,
      m.failed,
      fmt(m.requestThroughput),
      fmt(m.outputThroughput, 1),
      fmt(m.totalTokenThroughput, 1),
      ...(cfg.slo ? [fmt(m.requestGoodput)] : []),
      fmt(m.ttft.median, 1),
      fmt(m.ttft.p90, 1),
      fmt(m.ttft.p99, 1),
      fmt(m.tpot.median, 1),
      fmt(m.tpot.p99, 1),
      fmt(m.itl.median, 1),
      fmt(m.itl.p99, 1),
      fmt(m.e2el.median, 1),
      fmt(m.e2el.p99, 1),
    ];
    md.push(`| ${cells.join(" | ")} |`);
  }
  md.push(
    "",
    "Latencies in ms. TPOT = (E2EL − TTFT)/(output tokens − 1); percentiles by linear interpolation.",
  );
  const failures = result.runs.filter((r) => r.metrics.failed > 0);
  if (failures.length) {
    md.push("", "### Failed requests", "");
    for (const r of failures)
      for (const [reason, n] of Object.entries(r.metrics.errors))
        md.push(`- ${r.target}, ${r.loadLabel}: ${n} × ${reason}`);
  }
  if (charts.length) {
    md.push("", "## Charts", "");
    for (const c of charts) md.push(`### ${c.title}`, "", `![${c.title}](${c.png ?? c.svg})`, "");
  }
  const withServer = result.runs.filter((r) => r.server);
  if (withServer.length) {
    md.push("", "## Server metrics", "");
    md.push(
      "| target | load | steps | mean batch | batch sizes (steps) | prefix hit % | preemptions | KV peak % | peak waiting | server queue ms |",
    );
    md.push(`|${"---|".repeat(10)}`);
    for (const r of withServer) {
      const s = r.server!;
      const dist =
        s.batchSize?.buckets
          .filter((b) => b.count > 0)
          .map((b) => `${b.label}: ${b.count}`)
          .join(", ") ?? "";
      md.push(
        `| ${[
          r.target,
          r.loadLabel,
          s.batchSize?.steps ?? "",
          fmt(s.batchSize?.mean),
          dist,
          s.prefixCache?.hitRate === null || s.prefixCache === undefined
            ? ""
            : fmt(s.prefixCache.hitRate * 100, 1),
          s.preemptions ?? "",
          s.kvUsage.peak === null ? "" : fmt(s.kvUsage.peak * 100, 1),
          s.peakWaiting ?? "",
          fmt(s.serverMeanMs.queue, 1),
        ].join(" | ")} |`,
      );
    }
  }
  const grouped = result.runs.filter((r) => r.classes || r.tenants);
  if (grouped.length) {
    md.push("", "## Classes and tenants", "");
    md.push(
      "| target | load | group | ok/sent | out tok/s | TTFT p50 | TTFT p99 | queue wait p50 | starved |",
    );
    md.push(`|${"---|".repeat(9)}`);
    for (const r of grouped) {
      const g = { ...(r.classes ?? {}), ...(r.tenants ?? {}) };
      for (const [k, v] of Object.entries(g))
        md.push(
          `| ${[
            r.target,
            r.loadLabel,
            k,
            `${v.completed}/${v.sent}`,
            fmt(v.outputThroughput, 1),
            fmt(v.ttft.median, 1),
            fmt(v.ttft.p99, 1),
            `${fmt(v.queueWait.median, 1)}${v.queueWaitFromServer ? "" : " (TTFT)"}`,
            v.starved,
          ].join(" | ")} |`,
        );
      if (r.jainFairness !== undefined)
        md.push(`| ${r.target} | ${r.loadLabel} | Jain's index | ${fmt(r.jainFairness, 4)} | | | | | |`);
    }
  }
  const comps = compareRuns(result);
  if (comps.length) {
    md.push("", `## Comparison (${comps[0]!.b} / ${comps[0]!.a})`, "");
    const keys = [...new Set(comps.flatMap((c) => Object.keys(c.metrics)))];
    md.push(`| metric | ${comps.map((c) => c.load).join(" | ")} |`);
    md.push(`|${"---|".repeat(comps.length + 1)}`);
    for (const k of keys) md.push(`| ${k} | ${comps.map((c) => fmt(c.metrics[k]?.ratio, 3)).join(" | ")} |`);
  }
  return `${md.join("\n")}\n`;
}
