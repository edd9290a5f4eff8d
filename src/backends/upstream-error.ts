import { SpindleError } from "../errors.js";

/**
 * A request an upstream server (the openai backend) could not serve, with the HTTP status the
 * client gets for it:
 *
 *   4xx  the upstream refused the request: its status and message passed through
 *   502  bad gateway: the upstream answered 5xx, sent a malformed stream, or broke the connection
 *   503  no upstream can take it: refused connections, unhealthy upstreams
 *   504  the upstream timed out
 *
 * `connection` marks failures that say the upstream is down (connection refused, no such host): the
 * backend takes that upstream out of rotation until its health check passes again. `stale` marks a
 * request that failed on its connection before any answer (a kept-alive connection the server had
 * closed): worth one more try on a fresh connection to the same upstream.
 */
export class UpstreamError extends SpindleError {
  readonly status: number;
  readonly param: string | null;
  readonly connection: boolean;
  readonly stale: boolean;

  constructor(
    message: string,
    status: number,
    code = defaultCode(status),
    opts: { param?: string | null; connection?: boolean; stale?: boolean } = {},
  ) {
    super(message, code);
    this.name = "UpstreamError";
    this.status = status;
    this.param = opts.param ?? null;
    this.connection = opts.connection ?? false;
    this.stale = opts.stale ?? false;
  }
}

function defaultCode(status: number): string {
  if (status === 503) return "upstream_unavailable";
  if (status === 504) return "upstream_timeout";
  if (status >= 500) return "bad_gateway";
  return "upstream_error";
}
