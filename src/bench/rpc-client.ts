import { connect as http2Connect } from "node:http2";
import { type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { InferenceService } from "../server/rpc/gen/spindle/v1/inference_pb.js";
import {
  abortReason,
  type BenchRequest,
  type SendOptions,
  type StreamResult,
  startResult,
  type Target,
} from "./client.js";
import type { TokenCounter } from "./target.js";

/**
 * The benchmark's client for Spindle's RPC service (spindle.v1.InferenceService,
 * proto/spindle/v1/inference.proto), with the Connect libraries' own Node clients:
 *
 * - `connect`: the Connect protocol over HTTP/1.1, as the main HTTP port serves it;
 * - `grpc`: gRPC over HTTP/2 cleartext (prior knowledge), as `--grpc-port` serves it; every call
 *   of a run shares one HTTP/2 connection, as gRPC clients do.
 *
 * A request is one GenerateStream call, timed like an HTTP stream (client.ts): `performance.now()`
 * when the call starts and when each message arrives; a "token chunk" is a message with non-empty
 * `text`. Output and prompt tokens come from the final message's usage (as the HTTP client reads the
 * usage chunk), cached prompt tokens from `usage.cached_tokens`, the queue wait from its timings.
 * Failures (a Connect error code, a stream without its final message, no token) come back as a
 * StreamResult with ok false and a reason such as "gRPC RESOURCE_EXHAUSTED"; send never throws.
 */

export type Protocol = "http" | "connect" | "grpc";

export const PROTOCOLS: readonly Protocol[] = ["http", "connect", "grpc"];

const NAME: Record<Exclude<Protocol, "http">, string> = { connect: "Connect", grpc: "gRPC" };

/** "ResourceExhausted" → "RESOURCE_EXHAUSTED", the name gRPC tools print. */
export function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

const oneLine = (s: string, max = 200) => {
  const t = s.replace(/\s+/g, " ").trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
};

const headersOf = (apiKey: string | undefined) =>
  apiKey ? { authorization: `Bearer ${apiKey}` } : undefined;

export class RpcTarget {
  private readonly client: Client<typeof InferenceService>;

  private constructor(
    readonly protocol: Exclude<Protocol, "http">,
    readonly url: string,
    transport: Transport,
    private readonly session: Http2SessionManager | undefined,
  ) {
    this.client = createClient(InferenceService, transport);
  }

  /** A client of the service at `url` (http://host:port, no path) over `protocol`. */
  static create(protocol: Exclude<Protocol, "http">, url: string): RpcTarget {
    if (protocol === "grpc") {
      const session = new Http2SessionManager(url);
      return new RpcTarget(
        protocol,
        url,
        createGrpcTransport({ baseUrl: url, sessionManager: session }),
        session,
      );
    }
    return new RpcTarget(
      protocol,
      url,
      createConnectTransport({ baseUrl: url, httpVersion: "1.1" }),
      undefined,
    );
  }

  /**
   * Checks that `url` speaks HTTP/2 with prior knowledge (gRPC's transport) with one PING on a
   * connection of its own. Without it a gRPC call to an HTTP/1.1 port ends in a protocol error that
   * the HTTP/2 session raises after the client has stopped listening (an uncaught exception).
   */
  static async checkHttp2(url: string, timeoutMs = 10_000): Promise<void> {
    const session = http2Connect(url);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no HTTP/2 answer within ${timeoutMs} ms`)),
          timeoutMs,
        );
        session.on("error", (err) => {
          clearTimeout(timer);
          reject(err);
        });
        session.once("connect", () =>
          session.ping((err) => {
            clearTimeout(timer);
            if (err) reject(err);
            else resolve();
          }),
        );
      });
    } catch (err) {
      throw new Error(`${url} does not speak HTTP/2 (${(err as Error).message})`);
    } finally {
      session.on("error", () => {});
      session.destroy();
    }
  }

  /** The first model ListModels names. */
  async firstModel(apiKey: string | undefined): Promise<string> {
    let id: string | undefined;
    try {
      const r = await this.client.listModels({}, { headers: headersOf(apiKey), timeoutMs: 30_000 });
      id = r.models[0]?.id;
    } catch (err) {
      throw new Error(`ListModels: ${ConnectError.from(err).message}`);
    }
    if (!id) throw new Error("ListModels named no model");
    return id;
  }

  /** Token counts with the service's Tokenize (no special tokens), or undefined when it fails. */
  async tokenCounter(model: string, apiKey: string | undefined): Promise<TokenCounter | undefined> {
    const count: TokenCounter = async (text) =>
      (
        await this.client.tokenize(
          { model, text, addSpecialTokens: false },
          { headers: headersOf(apiKey), timeoutMs: 30_000 },
        )
      ).count;
    try {
      return (await count("hello world")) > 0 ? count : undefined;
    } catch {
      return undefined;
    }
  }

  /** One GenerateStream call, timed. Never throws. */
  async send(t: Target, r: BenchRequest, o: SendOptions = {}): Promise<StreamResult> {
    const { now, res, fail } = startResult(r, o);
    const aborted = () => fail(abortReason(o.signal));
    if (o.signal?.aborted) return aborted();

    let usageTokens: number | undefined;
    let lastChunkAt: number | undefined;
    try {
      const stream = this.client.generateStream(
        {
          model: t.model,
          ...(t.api === "chat" ? { messages: [{ role: "user", content: r.prompt }] } : { prompt: r.prompt }),
          maxTokens: r.maxTokens,
          temperature: r.temperature,
          priority: r.priority ?? 0,
          ignoreEos: r.ignoreEos,
        },
        { signal: o.signal, headers: headersOf(r.apiKey) },
      );
      for await (const m of stream) {
        const at = now();
        if (m.text.length > 0) {
          const rel = at - res.startedAt;
          if (res.ttftMs === undefined) res.ttftMs = rel;
          else res.itlMs.push(at - lastChunkAt!);
          lastChunkAt = at;
          res.chunkTimesMs.push(rel);
          res.textChars += m.text.length;
        }
        if (m.usage) {
          usageTokens = m.usage.completionTokens;
          res.promptTokens = m.usage.promptTokens;
          res.promptTokensFrom = "usage";
          res.cachedTokens = m.usage.cachedTokens;
        }
        if (m.timings) res.queueWaitMs = m.timings.queueWaitMs;
        if (m.finishReason) res.finishReason = m.finishReason;
      }
    } catch (err) {
      if (o.signal?.aborted) return aborted();
      const e = ConnectError.from(err);
      return fail(
        `${NAME[this.protocol]} ${codeName(e.code)}`,
        oneLine(`${codeName(e.code)}: ${e.rawMessage}`),
      );
    }
    res.e2eMs = now() - res.startedAt;
    res.outputTokens = usageTokens ?? res.chunkTimesMs.length;
    res.outputTokensFrom = usageTokens !== undefined ? "usage" : "chunks";
    if (res.finishReason === undefined) return fail("stream ended before its final message");
    if (res.ttftMs === undefined) return fail("no token received");
    res.ok = true;
    return res;
  }

  /** Closes the HTTP/2 connection (gRPC); the HTTP/1.1 sockets close on their own. */
  close(): void {
    this.session?.abort();
  }
}
