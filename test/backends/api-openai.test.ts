import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { apiSuite, MODEL } from "./api-suite.js";

// A Spindle gateway in front of a second real Spindle (local backend) on 127.0.0.1: its answers must
// be the upstream's, token for token.
let upstream: TestServer | undefined;

apiSuite({
  backend: "openai",
  sameAsLocal: true,
  async start() {
    upstream = await startTestServer({ modelName: "upstream-model" });
    return startTestServer({
      modelName: MODEL,
      backend: {
        kind: "openai",
        modelPath: testModel(STORIES_260K),
        upstreams: [upstream.url],
        upstreamConcurrency: 4,
      },
    });
  },
  stop: async () => {
    await upstream?.close();
  },
});
