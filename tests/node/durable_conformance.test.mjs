// The official Durable Streams conformance suite against the node at DS_URL
// (tests/test_durable_conformance.py starts one and reads the JSON report).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
import { describe } from "vitest"

describe("streamfan", () => {
  runConformanceTests({ baseUrl: process.env.DS_URL })
})
