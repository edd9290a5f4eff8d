import { freePort } from "../../src/net.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer } from "../helpers/server.js";
import { apiSuite, MODEL } from "./api-suite.js";

// A Spindle gateway in front of a second real Spindle process (local backend) on 127.0.0.1, which
// the gateway itself starts and supervises (--spawn): its answers must be the upstream's, which are
// the local engine's, token for token.

apiSuite({
  backend: "openai",
  sameAsLocal: true,
  async start() {
    const port = await freePort();
    const model = testModel(STORIES_260K);
    return startTestServer({
      modelName: MODEL,
      backend: {
        kind: "openai",
        modelPath: model,
        upstreams: [`http://127.0.0.1:${port}`],
        upstreamConcurrency: 4,
        spawn: `'${process.execPath}' --import tsx src/cli/entry.ts serve --model '${model}' --port ${port} --log-level warn`,
      },
    });
  },
});
