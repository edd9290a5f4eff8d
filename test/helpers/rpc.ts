import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";
import type {
  GenerateRequestSchema,
  InferenceService,
} from "../../src/server/rpc/gen/spindle/v1/inference_pb.js";

/** The ConnectError a call ended with (the test fails if it succeeded or threw something else). */
export async function failure(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return err as ConnectError;
  }
  throw new Error("the call succeeded");
}

/**
 * The request is refused with INVALID_ARGUMENT naming `field`, by Generate and by GenerateStream
 * (before the stream's first message).
 */
export async function expectInvalidArgument(
  client: Client<typeof InferenceService>,
  req: MessageInitShape<typeof GenerateRequestSchema>,
  field: string,
): Promise<void> {
  const err = await failure(client.generate(req));
  expect(err.code, `${field}: ${err.rawMessage}`).toBe(Code.InvalidArgument);
  expect(err.rawMessage).toContain(field);
  const streamErr = await failure(
    (async () => {
      for await (const _ of client.generateStream(req)) {
      }
    })(),
  );
  expect(streamErr.code).toBe(Code.InvalidArgument);
  expect(streamErr.rawMessage).toContain(field);
}
