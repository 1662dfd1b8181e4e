/**
 * `node dist/test/bench/ec2-failover.js [latencyMs...]`: how long the EC2 takeover takes, from
 * the decision (HaController.setRole("active"), which turns forwarding on at once) until every
 * route table's route is replaced and the Elastic IP is re-associated, for 1 and 3 route tables,
 * with and without one throttled call (RequestLimitExceeded, retried after the takeover's own
 * backoff).
 *
 * No AWS endpoint or emulator is reachable here: the EC2 client is aws-sdk-client-mock's, and
 * each call answers after an injected latency (default 200 ms, a typical EC2 API round trip from
 * inside a region; give others as arguments). The backoff sleeps for real, with the jitter fixed
 * at its mean (random() = 0.5: 100 ms before the first retry). What this leaves out: the time EC2
 * takes to apply a route change once the call has returned, and the heartbeat timeout that comes
 * before the decision (misses x heartbeatMs, 1 s by default).
 */

import { performance } from "node:perf_hooks";
import { AssociateAddressCommand, EC2Client, ReplaceRouteCommand } from "@aws-sdk/client-ec2";
import { mockClient } from "aws-sdk-client-mock";
import { HaController } from "../../src/ha/controller.js";
import { DEFAULT_RETRY, Ec2Takeover } from "../../src/ha/ec2.js";
import { Clock, gateway, pipe } from "../unit/ha/helpers.js";

const RUNS = 5;
const TABLES = ["rtb-0123456789abcdef0", "rtb-0fedcba9876543210", "rtb-00112233445566778"];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const throttled = () =>
  Object.assign(new Error("Request limit exceeded."), {
    name: "RequestLimitExceeded",
    $metadata: { httpStatusCode: 503 },
  });

interface Times {
  routes: number;
  address: number;
  total: number;
  calls: number;
}

async function once(latency: number, tables: number, throttle: boolean): Promise<Times> {
  const client = new EC2Client({ region: "eu-west-1" });
  const mock = mockClient(client);
  let t0 = 0;
  let routesDone = 0;
  let routes = 0;
  let address = 0;
  let throttles = throttle ? 1 : 0;
  mock.on(ReplaceRouteCommand).callsFake(async () => {
    await sleep(latency);
    if (throttles > 0) {
      throttles--;
      throw throttled();
    }
    if (++routesDone === tables) routes = performance.now() - t0;
    return {};
  });
  mock.on(AssociateAddressCommand).callsFake(async () => {
    await sleep(latency);
    address = performance.now() - t0;
    return { AssociationId: "eipassoc-1" };
  });
  const tk = new Ec2Takeover(
    {
      region: "eu-west-1",
      networkInterfaceId: "eni-0a1b2c3d4e5f60718",
      routeTables: TABLES.slice(0, tables),
      destination: "0.0.0.0/0",
      allocationId: "eipalloc-0abc1234def567890",
      privateIpAddress: undefined,
      secondaryPrivateIp: undefined,
      checkMs: 5000,
    },
    client,
    { ...DEFAULT_RETRY, random: () => 0.5 },
  );
  const clock = new Clock();
  const [end] = pipe();
  const g = gateway(clock, end);
  const c = new HaController(
    {
      sync: g.sync,
      setForwarding: () => {},
      takeovers: [tk],
      nowMs: () => clock.ms,
    },
    {
      arbiter: "heartbeat",
      heartbeatMs: 200,
      misses: 5,
      priority: 100,
      checkMs: 5000,
      retryMs: 2000,
    },
  );
  t0 = performance.now();
  await c.setRole("active", "bench");
  const total = performance.now() - t0;
  c.stop();
  mock.restore();
  return { routes, address, total, calls: tk.stats.calls };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

async function main(): Promise<void> {
  const latencies = process.argv
    .slice(2)
    .map(Number)
    .filter((x) => x >= 0);
  if (latencies.length === 0) latencies.push(200);
  console.log(
    "EC2 takeover against aws-sdk-client-mock (mocked API, no AWS), median of 5 runs, ms",
  );
  console.log("latency  tables  throttled  calls  routes replaced  address moved  done");
  for (const latency of latencies)
    for (const tables of [1, 3])
      for (const throttle of [false, true]) {
        const runs: Times[] = [];
        for (let i = 0; i < RUNS; i++) runs.push(await once(latency, tables, throttle));
        const m = (k: keyof Times) => median(runs.map((r) => r[k])).toFixed(0);
        console.log(
          `${String(latency).padStart(7)}  ${String(tables).padStart(6)}  ${(throttle ? "once" : "no").padStart(9)}  ${m("calls").padStart(5)}  ${m("routes").padStart(15)}  ${m("address").padStart(13)}  ${m("total").padStart(4)}`,
        );
      }
}

void main();
