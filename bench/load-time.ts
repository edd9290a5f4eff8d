import { closeSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { percentile } from "../src/bench/metrics.js";
import { alignTable } from "../src/bench/report.js";
import { llamaCppTools } from "./llama-cpp-build.js";
import { type StartedServer, startServer, startSpindle } from "./servers.js";

/**
 * `npm run bench:load-time`: how long Spindle and llama-server take from start to a healthy
 * /health on the same GGUF files (issue 21 §4), and how much memory each holds then. Every file is
 * read once first, so both load from the page cache, as a restart does; then each round starts and
 * stops one server after the other, the order flipped every round. The figures are medians over the
 * rounds with their min–max as the noise; the ratio is Spindle / llama-server per round, then its
 * median. Resident memory is the process's VmRSS once healthy, against the file's size plus the KV
 * cache both are given (`--ctx-size` tokens).
 *
 * llama-server is `--llama-server PATH`, or built once from the llama.cpp sources node-llama-cpp
 * carries (llama-cpp-build.ts). Only measures; nothing here is part of the product.
 */

const USAGE = `usage: npm run bench:load-time -- --model FILE.gguf[,FILE2.gguf...] [--rounds 3] [--threads 2]
           [--ctx-size 4096] [--llama-server PATH]

Realistic sizes come from spindle synth-model, e.g. a Llama-3.2-1B shape in Q8_0:
  node bin/spindle.js synth-model --out l1b-q8.gguf --dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --type Q8_0
and the 3B (--dim 3072 --layers 28 --heads 24 --kv-heads 8 --ffn 8192) and 8B shapes
(--dim 4096 --layers 32 --heads 32 --kv-heads 8 --ffn 14336).`;

interface Options {
  models: string[];
  rounds: number;
  threads: number;
  ctxSize: number;
  llamaServer: string | undefined;
}

function parseOptions(): Options | undefined {
  const { values } = parseArgs({
    options: {
      model: { type: "string", multiple: true },
      rounds: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      "ctx-size": { type: "string", default: "4096" },
      "llama-server": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const models = (values.model ?? []).flatMap((m) => m.split(",")).filter((m) => m.length > 0);
  if (values.help || models.length === 0) {
    console.log(USAGE);
    return undefined;
  }
  return {
    models,
    rounds: Number(values.rounds),
    threads: Number(values.threads),
    ctxSize: Number(values["ctx-size"]),
    llamaServer: values["llama-server"],
  };
}

/** A process's resident memory in bytes (VmRSS), or NaN once it is gone. */
function rssBytes(pid: number | undefined): number {
  try {
    const kb = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)?.[1];
    return kb === undefined ? Number.NaN : Number(kb) * 1024;
  } catch {
    return Number.NaN;
  }
}

/** Reads the file once, so that every start loads it from the page cache. */
function warm(path: string): void {
  const fd = openSync(path, "r");
  const buf = new Uint8Array(64 * 2 ** 20);
  for (let pos = 0; readSync(fd, buf, 0, buf.length, pos) > 0; pos += buf.length);
  closeSync(fd);
}

interface Sample {
  seconds: number;
  rss: number;
}

type Side = "spindle" | "llama";

async function startOnce(side: Side, model: string, o: Options, llamaServer: string): Promise<Sample> {
  const t0 = performance.now();
  let server: StartedServer;
  if (side === "spindle") {
    server = await startSpindle(
      "Spindle",
      ["--model", model, "--threads", String(o.threads), "--ctx-size", String(o.ctxSize)],
      { quiet: true, pollMs: 20 },
    );
  } else {
    server = await startServer(
      "llama-server",
      llamaServer,
      [
        ...["-m", model, "--host", "127.0.0.1", "--port", "{port}"],
        ...["-t", String(o.threads), "-c", String(o.ctxSize), "-np", "1", "--no-webui"],
      ],
      { quiet: true, pollMs: 20 },
    );
  }
  const seconds = (performance.now() - t0) / 1000;
  const rss = rssBytes(server.child.pid);
  await server.stop();
  return { seconds, rss };
}

const GiB = 2 ** 30;

function spread(xs: number[], digits = 2): string {
  const sorted = [...xs].sort((a, b) => a - b);
  return `${percentile(sorted, 0.5).toFixed(digits)} (${sorted[0]!.toFixed(digits)}–${sorted.at(-1)!.toFixed(digits)})`;
}

async function main(): Promise<number> {
  const o = parseOptions();
  if (!o) return 0;
  const llamaServer = o.llamaServer ?? (await llamaCppTools(["llama-server"]))["llama-server"];
  console.log(
    `${o.threads} threads, context ${o.ctxSize}; ${o.rounds} rounds, order flipped each round; load average ${loadavg()[0]!.toFixed(1)}`,
  );
  const rows: string[][] = [
    ["model", "file GiB", "Spindle s", "llama-server s", "ratio", "Spindle RSS GiB", "llama-server RSS GiB"],
  ];
  for (const model of o.models) {
    warm(model);
    const got: Record<Side, Sample[]> = { spindle: [], llama: [] };
    for (let round = 0; round < o.rounds; round++) {
      const order: Side[] = round % 2 === 0 ? ["spindle", "llama"] : ["llama", "spindle"];
      for (const side of order) {
        const s = await startOnce(side, model, o, llamaServer);
        got[side].push(s);
        console.log(
          `  ${model} round ${round + 1} ${side}: ${s.seconds.toFixed(2)} s, RSS ${(s.rss / GiB).toFixed(2)} GiB`,
        );
      }
    }
    const ratios = got.spindle.map((s, i) => s.seconds / got.llama[i]!.seconds);
    rows.push([
      model.split("/").at(-1)!,
      (statSync(model).size / GiB).toFixed(2),
      spread(got.spindle.map((s) => s.seconds)),
      spread(got.llama.map((s) => s.seconds)),
      spread(ratios),
      spread(got.spindle.map((s) => s.rss / GiB)),
      spread(got.llama.map((s) => s.rss / GiB)),
    ]);
  }
  console.log(alignTable(rows));
  return 0;
}

process.exitCode = await main();
