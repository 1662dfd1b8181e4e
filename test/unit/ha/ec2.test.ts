// The EC2 takeover against aws-sdk-client-mock (no AWS endpoint is reachable here, and no
// emulator): the exact requests, retries with backoff on throttling, and a takeover that fails
// half-way (routes replaced, the address not): reported, counted, retried until it is done.
import {
  AssignPrivateIpAddressesCommand,
  AssociateAddressCommand,
  DescribeRouteTablesCommand,
  EC2Client,
  ReplaceRouteCommand,
} from "@aws-sdk/client-ec2";
import { mockClient } from "aws-sdk-client-mock";
import t from "tap";
import type { Ec2Settings } from "../../../src/ha/config.js";
import { HaController } from "../../../src/ha/controller.js";
import { DEFAULT_RETRY, Ec2Takeover, retryable } from "../../../src/ha/ec2.js";
import { Role } from "../../../src/ha/protocol.js";
import { Clock, gateway, pipe } from "./helpers.js";

const SPEC: Ec2Settings = {
  region: "eu-west-1",
  networkInterfaceId: "eni-0a1b2c3d4e5f60718",
  routeTables: ["rtb-0123456789abcdef0", "rtb-0fedcba9876543210"],
  destination: "0.0.0.0/0",
  allocationId: "eipalloc-0abc1234def567890",
  privateIpAddress: undefined,
  secondaryPrivateIp: undefined,
  checkMs: 5000,
};

const throttled = () =>
  Object.assign(new Error("Request limit exceeded."), {
    name: "RequestLimitExceeded",
    $metadata: { httpStatusCode: 503 },
  });
const denied = () =>
  Object.assign(new Error("You are not authorized to perform this operation."), {
    name: "UnauthorizedOperation",
    $metadata: { httpStatusCode: 403 },
  });

function takeover(spec = SPEC) {
  const client = new EC2Client({ region: "eu-west-1" });
  const mock = mockClient(client);
  const sleeps: number[] = [];
  const tk = new Ec2Takeover(spec, client, {
    ...DEFAULT_RETRY,
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    random: () => 1,
  });
  return { mock, tk, sleeps };
}

t.test(
  "the takeover replaces each route table's route and re-associates the Elastic IP",
  async (t) => {
    const { mock, tk } = takeover();
    mock.on(ReplaceRouteCommand).resolves({});
    mock.on(AssociateAddressCommand).resolves({ AssociationId: "eipassoc-1" });
    await tk.active();
    const routes = mock.commandCalls(ReplaceRouteCommand).map((c) => c.args[0].input);
    t.same(routes, [
      {
        RouteTableId: "rtb-0123456789abcdef0",
        DestinationCidrBlock: "0.0.0.0/0",
        NetworkInterfaceId: "eni-0a1b2c3d4e5f60718",
      },
      {
        RouteTableId: "rtb-0fedcba9876543210",
        DestinationCidrBlock: "0.0.0.0/0",
        NetworkInterfaceId: "eni-0a1b2c3d4e5f60718",
      },
    ]);
    t.same(
      mock.commandCalls(AssociateAddressCommand).map((c) => c.args[0].input),
      [
        {
          AllocationId: "eipalloc-0abc1234def567890",
          NetworkInterfaceId: "eni-0a1b2c3d4e5f60718",
          AllowReassociation: true,
        },
      ],
    );
    t.equal(tk.stats.retries, 0);
  },
);

t.test("with a secondary private IP it is reassigned to our ENI", async (t) => {
  const { mock, tk } = takeover({
    ...SPEC,
    allocationId: undefined,
    secondaryPrivateIp: "10.0.0.50",
  });
  mock.on(ReplaceRouteCommand).resolves({});
  mock.on(AssignPrivateIpAddressesCommand).resolves({});
  await tk.active();
  t.same(
    mock.commandCalls(AssignPrivateIpAddressesCommand).map((c) => c.args[0].input),
    [
      {
        NetworkInterfaceId: "eni-0a1b2c3d4e5f60718",
        PrivateIpAddresses: ["10.0.0.50"],
        AllowReassignment: true,
      },
    ],
  );
  t.equal(mock.commandCalls(AssociateAddressCommand).length, 0);
});

t.test("throttling is retried with exponential backoff", async (t) => {
  const { mock, tk, sleeps } = takeover({ ...SPEC, routeTables: ["rtb-0123456789abcdef0"] });
  mock
    .on(ReplaceRouteCommand)
    .rejectsOnce(throttled())
    .rejectsOnce(throttled())
    .rejectsOnce(throttled())
    .resolves({});
  mock.on(AssociateAddressCommand).resolves({});
  await tk.active();
  t.equal(mock.commandCalls(ReplaceRouteCommand).length, 4, "three throttled calls, then success");
  t.same(sleeps, [200, 400, 800], "backoff doubles (full jitter: random() * cap, here 1)");
  t.equal(tk.stats.retries, 3);
  t.ok(retryable(throttled()));
  t.notOk(retryable(denied()), "a permission error is not retried");
  t.ok(retryable({ name: "X", $metadata: { httpStatusCode: 500 } }), "a 5xx is");
  t.ok(retryable({ code: "ECONNRESET" }), "a reset connection is");
});

t.test("backoff is capped, and a call throttled past the attempts fails", async (t) => {
  const { mock, tk, sleeps } = takeover({ ...SPEC, routeTables: ["rtb-0123456789abcdef0"] });
  mock.on(ReplaceRouteCommand).rejects(throttled());
  mock.on(AssociateAddressCommand).resolves({});
  await t.rejects(tk.active(), /ReplaceRoute rtb-0123456789abcdef0: RequestLimitExceeded/);
  t.equal(mock.commandCalls(ReplaceRouteCommand).length, DEFAULT_RETRY.attempts);
  t.same(sleeps, [200, 400, 800, 1600, 3200]);
  t.equal(mock.commandCalls(AssociateAddressCommand).length, 1, "the address is still moved");
});

t.test("a takeover that fails half-way is reported, counted and retried until done", async (t) => {
  const client = new EC2Client({ region: "eu-west-1" });
  const mock = mockClient(client);
  mock.on(ReplaceRouteCommand).resolves({});
  mock.on(AssociateAddressCommand).rejectsOnce(denied()).resolves({});
  const tk = new Ec2Takeover(SPEC, client, {
    ...DEFAULT_RETRY,
    sleep: async () => {},
    random: () => 0,
  });
  const clock = new Clock();
  const [ea] = pipe();
  const g = gateway(clock, ea);
  const errors: string[] = [];
  let forwarding = false;
  const c = new HaController(
    {
      sync: g.sync,
      setForwarding: (on) => {
        forwarding = on;
      },
      takeovers: [tk],
      nowMs: () => clock.ms,
      log: { info() {}, warn() {}, error: (o) => errors.push(JSON.stringify(o)) },
    },
    {
      arbiter: "keepalived",
      heartbeatMs: 200,
      misses: 5,
      priority: 100,
      checkMs: 5000,
      retryMs: 2000,
    },
  );
  await c.setRole("active", "test");
  t.ok(forwarding, "forwarding starts at once, before the EC2 calls");
  t.equal(c.stats.takeoverFailures.ec2, 1, "the failure is counted");
  t.match(errors[0] ?? "", /AssociateAddress eipalloc-0abc1234def567890: UnauthorizedOperation/);
  t.equal(mock.commandCalls(ReplaceRouteCommand).length, 2, "both routes were replaced");
  clock.ms += 2500;
  c.tick();
  await c.settled();
  t.equal(
    mock.commandCalls(ReplaceRouteCommand).length,
    2,
    "the retry does not replace them again",
  );
  t.equal(mock.commandCalls(AssociateAddressCommand).length, 2, "it retries the address");
  t.equal(c.stats.takeoversDone, 1, "and the takeover is done");
  c.stop();
});

t.test(
  "an active whose routes point to the peer is fenced: it demotes and stays standby",
  async (t) => {
    const client = new EC2Client({ region: "eu-west-1" });
    const mock = mockClient(client);
    mock.on(ReplaceRouteCommand).resolves({});
    mock.on(AssociateAddressCommand).resolves({});
    mock.on(DescribeRouteTablesCommand).resolves({
      RouteTables: SPEC.routeTables.map((id) => ({
        RouteTableId: id,
        Routes: [
          { DestinationCidrBlock: "0.0.0.0/0", NetworkInterfaceId: "eni-0ffffffffffffffff" },
        ],
      })),
    });
    const tk = new Ec2Takeover(SPEC, client, { ...DEFAULT_RETRY, sleep: async () => {} });
    const clock = new Clock();
    const [ea] = pipe();
    ea.cut = true; // the sync link is broken: the peer is never heard
    const g = gateway(clock, ea);
    let forwarding = false;
    const c = new HaController(
      {
        sync: g.sync,
        setForwarding: (on) => {
          forwarding = on;
        },
        takeovers: [tk],
        nowMs: () => clock.ms,
      },
      {
        arbiter: "heartbeat",
        heartbeatMs: 200,
        misses: 5,
        priority: 100,
        checkMs: 1000,
        retryMs: 2000,
      },
    );
    // Silent peer at start: it takes over.
    clock.ms += 1100;
    c.tick();
    await c.settled();
    t.equal(c.role, "active");
    t.equal(g.sync.role, Role.ACTIVE);
    // The peer took the routes (it promoted on the same broken link): we see it and step down.
    clock.ms += 1100;
    c.tick();
    await c.settled();
    await c.settled();
    t.equal(c.role, "standby", "demoted");
    t.notOk(forwarding, "no longer forwarding");
    t.ok(c.fenced, "fenced");
    clock.ms += 5000;
    c.tick();
    await c.settled();
    t.equal(c.role, "standby", "a fenced gateway does not promote again on silence");
    t.equal(mock.commandCalls(ReplaceRouteCommand).length, 2, "and never took the routes back");
    c.stop();
  },
);

t.test("the client uses the default credential chain with the SDK's retries off", async (t) => {
  const c = Ec2Takeover.client(SPEC) as EC2Client;
  t.equal(await c.config.region(), "eu-west-1");
  t.equal(await c.config.maxAttempts(), 1);
});
