// The official Durable Streams TypeScript client against a streamfan deployment
// (tests/test_durable_clients.py starts it, kills a node mid-stream and drops one reply).
//
// Env: DS_URL (the balancer, or a fault proxy in front of it), DS_PATH, DS_COUNT, DS_KEY (an API
// key: writes), DS_PAUSE_MS (between appends). Creates a JSON stream, tails it with one reader per
// live mode (SSE, long-poll), appends DS_COUNT items {i} through an IdempotentProducer, and prints
// one JSON line per event: {"wrote": i} as it goes, then {"seen": {sse: [...], "long-poll": [...]}}.
// A reader whose connection breaks resumes from the offset of the last batch it got, as the
// protocol asks; the producer's requests are retried with the client's own backoff.
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client"

const url = `${process.env.DS_URL}/v1/stream/${process.env.DS_PATH}`
const count = Number(process.env.DS_COUNT)
const pause = Number(process.env.DS_PAUSE_MS ?? "5")
const writer = { Authorization: `Bearer ${process.env.DS_KEY}` }
const say = (value) => process.stdout.write(JSON.stringify(value) + "\n")
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
// The producer answers the protocol's statuses itself (a 409 for a batch that overtook an earlier
// one is waited out and sent again), so its fetch retries only what the transport lost: a refused
// or broken connection (a killed node, a lost reply) and a 503 (no node answered), with backoff.
async function fetchWithRetries(input, init) {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(input, init)
      if (response.status !== 503 || attempt >= 40) return response
    } catch (error) {
      if (attempt >= 40 || init?.signal?.aborted) throw error
    }
    await sleep(Math.random() * Math.min(500, 25 * 2 ** attempt))
  }
}

const handle = await DurableStream.create({
  url,
  contentType: "application/json",
  headers: writer,
  fetch: fetchWithRetries,
})

const progress = { sse: [], "long-poll": [], flushed: false }
// Where each side is, every 2 s (what a stuck run shows in the test's output).
const ticker = setInterval(() => {
  const at = (seen) => seen.length && seen[seen.length - 1]
  say({ progress: { sse: at(progress.sse), "long-poll": at(progress["long-poll"]), flushed: progress.flushed } })
}, 2000)

async function follow(live) {
  const seen = (progress[live] = [])
  let offset = "-1"
  while (seen.length === 0 || seen[seen.length - 1] !== count - 1) {
    try {
      const res = await stream({ url, offset, live, headers: writer, fetch: fetchWithRetries })
      await new Promise((resolve) => {
        const stop = res.subscribeJson(async (batch) => {
          seen.push(...batch.items.map((item) => item.i))
          offset = batch.offset
          if (seen[seen.length - 1] === count - 1) {
            stop()
            resolve()
          }
        })
        res.closed.then(resolve, resolve)
      })
    } catch {
      await sleep(100) // the node went away between requests: resume from `offset`
    }
  }
  return seen
}

const readers = Promise.all([follow("sse"), follow("long-poll")])
const producer = new IdempotentProducer(handle, "writer-1", {
  fetch: fetchWithRetries,
  lingerMs: 2,
  onError: (error) => say({ error: String(error) }),
})
for (let i = 0; i < count; i++) {
  producer.append(JSON.stringify({ i }))
  if (i % 10 === 0) say({ wrote: i })
  await sleep(pause)
}
await producer.flush()
await producer.close()
progress.flushed = true
const [sse, longPoll] = await readers
clearInterval(ticker)
say({ seen: { sse, "long-poll": longPoll } })
process.exit(0)
